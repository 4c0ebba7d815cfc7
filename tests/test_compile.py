"""torch.compile on CPU: what the Doctor observes on a compiled model, and the two
helpers that handle it (``nndoctor._compile``).

Hook handling is Dynamo's (the frontend), the same for every backend; most tests use
``backend="aot_eager"`` (AOTAutograd like inductor, no C++ codegen: seconds, not tens of
seconds). The default inductor backend compiles here (gcc is present) and gets one
slow test of its own that repeats the two key cases.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nndoctor import Doctor
from nndoctor._compile import is_compiled, unwrap_compiled, verify_hooks_fired
from nndoctor._observations import ActivationRecord, Observations, StepRecord

LAYERS = {"0", "1", "2"}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def train(model, opt, steps: int) -> None:
    crit = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
        opt.zero_grad()
        crit(model(x), y).backward()
        opt.step()


def observed(doctor: Doctor) -> dict:
    obs = doctor.observations
    sampled = [s for s in obs.steps if s.sampled]
    return {
        "layers": {a.path for s in obs.steps for a in s.activations} - {""},
        "root": any(a.path == "" for s in obs.steps for a in s.activations),
        "inputs": sum(s.input is not None for s in sampled),
        "losses": len(obs.losses),
        "grad_steps": sum(bool(s.grad_norms) for s in sampled),
        "update_steps": sum(bool(s.update_norms) for s in sampled),
        "sampled": len(sampled),
    }


# -------------------------------------------------------------------- unwrap_compiled
def test_unwrap_plain_model_is_identity():
    model = tiny()
    assert unwrap_compiled(model) == (model, None)
    assert not is_compiled(model)


def test_unwrap_returns_the_original_module_with_a_note():
    model = tiny()
    compiled = torch.compile(model, backend="aot_eager")  # lazy: nothing compiles yet
    inner, note = unwrap_compiled(compiled)
    assert inner is model and is_compiled(compiled)
    assert "torch.compile" in note and "_orig_mod" in note


def test_in_place_compile_needs_no_unwrap():
    model = tiny()
    model.compile(backend="aot_eager")
    assert is_compiled(model)
    assert unwrap_compiled(model) == (model, None)


# ---------------------------------------------------------- what is observed, by case
def test_watch_started_before_first_compiled_call_sees_every_layer():
    """Doctor(unwrap_compiled(torch.compile(model))), watch() entered before the first
    compiled call: the per-step hooks are traced and keep firing, with the user's names."""
    model = tiny()
    compiled = torch.compile(model, backend="aot_eager")
    inner, _ = unwrap_compiled(compiled)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = Doctor(inner, optimizer=opt)
    with doctor.watch():
        train(compiled, opt, 6)
    seen = observed(doctor)
    assert seen["layers"] == LAYERS and seen["root"]
    assert seen["inputs"] == seen["sampled"] == 4
    assert seen["losses"] == 6 and seen["grad_steps"] == 4 and seen["update_steps"] == 4
    assert set(doctor.observations.params) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert verify_hooks_fired(doctor.observations) is None
    report = doctor.report()
    assert "activation-std" in report.checks_run and "dead-relu" in report.checks_run


def test_doctor_given_the_optimized_module_watches_the_original():
    """Doctor(torch.compile(model)) unwraps: the user's own layer names (no
    `_orig_mod.` prefix), the output recorded once, and a note saying so."""
    model = tiny()
    compiled = torch.compile(model, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = Doctor(compiled, optimizer=opt)
    assert doctor.model is model
    with doctor.watch():
        train(compiled, opt, 4)
    seen = observed(doctor)
    assert seen["layers"] == LAYERS
    assert "0.weight" in doctor.observations.params
    assert not any(p.startswith("_orig_mod") for p in doctor.observations.params)
    assert any("compile" in n for n in doctor.report().notes)


def test_hooks_added_after_first_compiled_call_never_fire():
    """Doctor(model), model compiled and called before watch(): no forward hook fires
    (root included), silently; loss, gradient and update observers still work, and
    verify_hooks_fired explains it."""
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = Doctor(model, optimizer=opt)
    compiled = torch.compile(model, backend="aot_eager")
    train(compiled, opt, 1)
    with doctor.watch():
        train(compiled, opt, 6)
    seen = observed(doctor)
    assert seen["layers"] == set() and not seen["root"] and seen["inputs"] == 0
    assert seen["losses"] == 6 and seen["grad_steps"] == 4 and seen["update_steps"] == 4
    note = verify_hooks_fired(doctor.observations)
    assert note is not None
    assert note.startswith("forward hooks (the model's own included) did not fire on any of the 4 sampled steps")
    assert "the model is compiled (torch.compile)" in note
    assert "gradient, loss and update checks still ran" in note
    report = doctor.report()
    skipped = {s["check"] for s in report.checks_skipped}
    assert {"activation-std", "dead-relu", "input-normalization"} <= skipped
    assert {"exploding-gradient", "update-ratio"} <= set(report.checks_run)


def test_optimized_module_watched_after_first_call_says_what_was_lost():
    """Compiled and already called before watch(): the graph was traced without our
    hooks, so no forward hook fires; the loss, gradient and update observers still work
    and the report says what was not observed and what to do."""
    model = tiny()
    compiled = torch.compile(model, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train(compiled, opt, 1)
    doctor = Doctor(compiled, optimizer=opt)
    with doctor.watch():
        train(compiled, opt, 5)
    seen = observed(doctor)
    assert seen["layers"] == set() and seen["losses"] == 5 and seen["grad_steps"] == 4
    notes = doctor.report().notes
    assert any("hooks (the model's own included) did not fire" in n for n in notes), notes


def test_in_place_compiled_module_keeps_hooks_after_first_call():
    model = tiny()
    model.compile(backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train(model, opt, 1)
    doctor = Doctor(model, optimizer=opt)
    with doctor.watch():
        train(model, opt, 5)
    assert observed(doctor)["layers"] == LAYERS
    assert verify_hooks_fired(doctor.observations) is None


@pytest.mark.slow
def test_default_inductor_backend_behaves_the_same():
    """The two key cases with torch.compile's default backend (inductor, C++ codegen)."""
    model = tiny()
    compiled = torch.compile(model)
    inner, note = unwrap_compiled(compiled)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = Doctor(inner, optimizer=opt)
    with doctor.watch():
        train(compiled, opt, 5)
    assert observed(doctor)["layers"] == LAYERS and note is not None
    assert verify_hooks_fired(doctor.observations) is None
    # Same compiled model, a new Doctor after it has run: nothing per layer.
    late = Doctor(model, optimizer=opt)
    with late.watch():
        train(compiled, opt, 5)
    seen = observed(late)
    assert seen["layers"] == set() and seen["losses"] == 5 and seen["grad_steps"] == 4
    assert verify_hooks_fired(late.observations) is not None


# ------------------------------------------------------ verify_hooks_fired on plain data
def _obs(activations: list[str], *, backward: int = 1, sampled: bool = True, modules=("", "0", "1")) -> Observations:
    from nndoctor._observations import ModuleMeta

    obs = Observations(modules={p: ModuleMeta(p, "X", "other", p != "", 0, True) for p in modules})
    step = StepRecord(step=0, sampled=sampled, backward_calls=backward)
    step.activations = [ActivationRecord(p, i, 0.0, 1.0, 4, False, False) for i, p in enumerate(activations)]
    obs.steps.append(step)
    return obs


@pytest.mark.parametrize(
    "activations, backward, sampled, modules, expected",
    [
        (["0", "1", ""], 1, True, ("", "0", "1"), None),
        ([], 0, True, ("", "0", "1"), None),  # no backward: nothing to judge
        ([], 1, False, ("", "0", "1"), None),  # not sampled: no hooks expected
        ([""], 1, True, ("",), None),  # a single-module model: the root is every layer
        ([""], 1, True, ("", "0", "1"), "per-layer forward hooks did not fire"),
        ([], 1, True, ("", "0", "1"), "forward hooks (the model's own included) did not fire"),
    ],
    ids=["all-fired", "no-backward", "unsampled", "single-module", "root-only", "none"],
)
def test_verify_hooks_fired_on_plain_observations(activations, backward, sampled, modules, expected):
    note = verify_hooks_fired(_obs(activations, backward=backward, sampled=sampled, modules=modules), compiled=True)
    if expected is None:
        assert note is None
    else:
        assert note.startswith(expected) and "torch.compile" in note


def test_verify_hooks_fired_names_other_causes_when_not_known_compiled():
    note = verify_hooks_fired(_obs([]), compiled=False)
    assert "trains another module object" in note
