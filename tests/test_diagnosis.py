"""The differential diagnosis (nndoctor/_diagnosis.py), on plain findings (no model).

The samples below carry the evidence keys the real checks emit (nndoctor/checks/*.py), one
sample per verdict a check can give. Every causal link is tested both ways: it explains
the symptom when its condition holds, and not otherwise. The bug zoo
(tests/test_bugzoo.py) checks the same links on real reports.
"""

from __future__ import annotations

import io
import itertools
import json
import math
from pathlib import Path

import jsonschema
import pytest
from rich.console import Console

from nndoctor import Finding, Report, Severity
from nndoctor._diagnosis import LINKS, SYMPTOM_ONLY, ANY, Diagnosis, candidates, diagnose, explaining_links
from nndoctor.checks._registry import REGISTRY
from nndoctor.reporters.console import print_report

SCHEMA = json.loads((Path(__file__).parent / "contract_schema.json").read_text())
E, W, I = Severity.ERROR, Severity.WARNING, Severity.INFO


def F(check: str, severity: Severity = W, where: str | None = None, **evidence) -> Finding:
    return Finding(check=check, severity=severity, title=f"{check} title", message=f"{check} message.",
                   fix=f"Fix {check}.", where=where, evidence=evidence)


# One sample per verdict: check id -> variant -> a factory (fresh findings per test).
SAMPLES = {
    "input-normalization": {
        "unscaled": lambda: F("input-normalization", W, mean=115.0, std=31.0, min=0.0, max=255.0, batches=5),
        "all-zero": lambda: F("input-normalization", E, batches=5),
        "constant": lambda: F("input-normalization", E, std=0.0, mean=3.0),
        "some-zero-batches": lambda: F("input-normalization", W, zero_fraction=1.0, mean=0.1, std=1.0,
                                       min=-3.0, max=3.0, batches=5),
    },
    "loss-input-format": {
        "softmax-ce": lambda: F("loss-input-format", E, "loss", loss_kind="cross_entropy", fed_by="softmax"),
        "sigmoid-bce-logits": lambda: F("loss-input-format", E, "loss", loss_kind="bce_logits", fed_by="sigmoid"),
        "logits-nll": lambda: F("loss-input-format", E, "loss", loss_kind="nll", fed_by="logits"),
        "softmax-bce": lambda: F("loss-input-format", W, "loss", loss_kind="bce", fed_by="softmax"),
        "relu-ce": lambda: F("loss-input-format", E, "loss", loss_kind="cross_entropy", fed_by="log_softmax",
                             problem="non_negative_logits", zero_fraction=0.5, logits_min=0.0),
        "wrong-dim": lambda: F("loss-input-format", E, "loss", loss_kind="nll", fed_by="log_softmax",
                               problem="wrong_normalisation_dim", norm_dim=0, row_norm_error=2.1, col_norm_error=0.0),
        "indices-regressed": lambda: F("loss-input-format", W, "loss", loss_kind="mse", fed_by=None,
                                       problem="class_indices_regressed", distinct_targets=4),
        "broadcast": lambda: F("loss-input-format", E, "loss", loss_kind="mse", fed_by=None, problem="broadcast",
                               prediction_shape=[32, 1], broadcast_shape=[32, 32]),
    },
    "frozen-layer": {
        "all-frozen": lambda: F("frozen-layer", E, parameters=4, kind="all_frozen"),
        "not-in-optimizer": lambda: F("frozen-layer", E, "0", modules=["0"], parameter_names=["0.weight"],
                                      kind="not_in_optimizer"),
        "no-gradient": lambda: F("frozen-layer", E, "encoder.0", modules=["encoder.0"],
                                 parameter_names=["encoder.0.weight"], kind="no_gradient"),
        "zero-gradient": lambda: F("frozen-layer", W, "0", modules=["0"], parameter_names=["0.weight"],
                                   kind="zero_gradient"),
        "never-changed": lambda: F("frozen-layer", W, "0", modules=["0"], parameter_names=["0.weight"],
                                   kind="never_changed"),
        "deliberate": lambda: F("frozen-layer", I, "0", modules=["0"], parameters=10, kind="requires_grad_false",
                                mechanism="requires_grad_false", placement="prefix"),
        "frozen-between": lambda: F("frozen-layer", W, "2", modules=["2"], parameters=10, kind="requires_grad_false",
                                    mechanism="requires_grad_false", placement="between"),
        "grads-wiped": lambda: F("frozen-layer", E, "0", modules=["0", "2"], parameter_names=["0.weight"],
                                 kind="grads_wiped", mechanism="grads_zeroed_before_step"),
    },
    "update-ratio": {
        "high": lambda: F("update-ratio", E, "2", median_ratio=3.2, early_median_ratio=3.2, direction="high"),
        "low": lambda: F("update-ratio", W, "0", median_ratio=2e-9, early_median_ratio=2e-9, direction="low"),
        "mildly-high": lambda: F("update-ratio", W, "0", median_ratio=0.012, early_median_ratio=0.012,
                                 direction="high"),
    },
    "weight-init": {
        "large": lambda: F("weight-init", W, "0", weights=["0.weight"], kind="large",
                           scale_by_weight={"0.weight": 13.4}),
        "small": lambda: F("weight-init", W, "0", weights=["0.weight"], kind="small",
                           scale_by_weight={"0.weight": 0.01}),
        "symmetric": lambda: F("weight-init", E, "2", weights=["2.weight"], kind="symmetric",
                               scale_by_weight={"2.weight": 0.0}),
    },
    "activation-std": {
        "exploding": lambda: F("activation-std", E, "2", layers=["2"], worst_std=3300.0, band=[0.5, 2.0]),
        "vanishing": lambda: F("activation-std", W, "3", layers=["3"], worst_std=0.04, band=[0.5, 2.0]),
    },
    "loss-not-decreasing": {
        "flat": lambda: F("loss-not-decreasing", W, first=1.38, last=1.38, relative_change=0.001,
                          losses=[1.38, 1.37, 1.39, 1.38]),
        "constant": lambda: F("loss-not-decreasing", E, first=1.4, last=1.4, relative_change=0.0,
                              losses=[1.4, 1.4, 1.4, 1.4]),
        "diverging": lambda: F("loss-not-decreasing", E, first=1.4, last=9.0, relative_change=5.4,
                               losses=[1.4, 3.0, 9.0]),
    },
    "nan-trace": {
        "in-loss": lambda: F("nan-trace", E, "loss", step=3, direction="loss",
                             events=[{"direction": "loss", "step": 3, "where": "loss"}]),
        "made-in-layer": lambda: F("nan-trace", E, "norm", step=0, direction="forward", first_bad_layer="norm",
                                   events=[{"direction": "forward", "step": 0, "where": "norm",
                                            "params_nonfinite": False, "producer_found": True}]),
        "blown-weights": lambda: F("nan-trace", E, "3", step=9, direction="forward", first_bad_layer="3",
                                   events=[{"direction": "forward", "step": 9, "where": "3",
                                            "params_nonfinite": True, "producer_found": True}]),
        "in-backward": lambda: F("nan-trace", E, "4.weight", step=4, direction="backward",
                                 first_bad_gradient="4.weight",
                                 events=[{"direction": "backward", "step": 4, "where": "4.weight"}]),
    },
    "gradient-check": {
        "non-finite": lambda: F("gradient-check", E, max_rel_error=math.inf, directions=3, dtype="float64"),
        "wrong-backward": lambda: F("gradient-check", E, "act", unit_kind="function", unit="MyRelu",
                                    method="gradcheck", max_rel_error=0.9),
    },
    "overfit-tiny-batch": {
        "stuck": lambda: F("overfit-tiny-batch", E, start_loss=1.4, final_loss=1.38, best_loss=1.37),
        "non-finite": lambda: F("overfit-tiny-batch", E, start_loss=1.4, final_loss=math.nan, best_loss=1.4),
        "optimizer-settings": lambda: F("overfit-tiny-batch", W, start_loss=1.4, final_loss=1.0, best_loss=1.0,
                                        retry_fitted_at=37),
    },
    "lr-sweep": {
        "too-high": lambda: F("lr-sweep", E, base_lr=50.0, better="x0.1", gain=0.4, noise_ratio=9.0),
        "too-high-lower-fits": lambda: F("lr-sweep", W, base_lr=1e-3, better="x0.1", gain=0.78, noise_ratio=354.0,
                                         progress={"0.1": 0.9998, "1": 0.22, "10": 0.15}),
        "too-low": lambda: F("lr-sweep", W, base_lr=1e-7, better="x10", gain=0.2, noise_ratio=9.0),
        "range-too-low": lambda: F("lr-sweep", W, base_lr=1e-7, better="range-test", decades_below=4.0),
        "range-too-high": lambda: F("lr-sweep", W, base_lr=20.0, better="range-test", diverged_at=3.0),
    },
    "train-eval-mode": {
        "eval-mode": lambda: F("train-eval-mode", W, step=0, eval_steps=[0, 1], mode_sensitive_layers=["2"]),
        "bn-batch-of-one": lambda: F("train-eval-mode", W, "features.1", layers=["features.1"]),
    },
    "label-distribution": {
        "out-of-range": lambda: F("label-distribution", E, min_label=0, max_label=10, n_classes=10),
        "one-class": lambda: F("label-distribution", E, n_labels=64, counts={3: 64}),
        "unshuffled": lambda: F("label-distribution", W, batches=5),
        "imbalance": lambda: F("label-distribution", I, imbalance=49.0, counts={0: 98, 1: 2}, n_labels=100),
    },
    "prediction-collapse": {
        "imbalance": lambda: F("prediction-collapse", W, step=20, predicted_share=1.0, predicted_class=0,
                               label_prior=0.98, steps=[3, 20], binary=True, pos_weight=False, imbalance=True),
        "ignores-input": lambda: F("prediction-collapse", W, step=20, predicted_share=0.97, predicted_class=2,
                                   label_prior=0.25, steps=[3, 20], binary=False, pos_weight=False, imbalance=False),
        "constant-output": lambda: F("prediction-collapse", W, step=20, output_std=1e-4, target_std=1.0,
                                     std_ratio=1e-4, steps=[3, 20]),
    },
    "random-input-loss": {
        "labels-unpaired": lambda: F("random-input-loss", W, holdout_gain=-0.01, n_train=48, n_holdout=16),
        "input-ignored": lambda: F("random-input-loss", E, output_change={"noise": 0.0, "zeros": 0.0}),
        "inputs-carry-nothing": lambda: F("random-input-loss", E, train_gain=0.0, noise_gain=0.3,
                                          output_change={"noise": 0.2}),
    },
    "unused-parameter": {
        "unregistered": lambda: F("unused-parameter", E, module_class="Linear", modules=2, parameters=2112),
        "unregistered-trained": lambda: F("unused-parameter", W, module_class="Linear", modules=2, parameters=2112),
        "never-called": lambda: F("unused-parameter", W, "aux", modules=["aux"], parameters=84, frozen=False),
    },
    "grad-not-zeroed": {"stale": lambda: F("grad-not-zeroed", E, step=1, stale_steps=[1, 2], checked_steps=2,
                                           stale_norm=3.0)},
    "repeated-batch": {"same": lambda: F("repeated-batch", W, step=1, repeated_pairs=[[0, 1]], pairs=1)},
    "dead-relu": {"dead": lambda: F("dead-relu", E, "1", dead_fraction=1.0, dead_units=64, units=64, samples=160)},
    "saturated-activation": {"rails": lambda: F("saturated-activation", W, "1", saturated_fraction=0.8)},
    "exploding-gradient": {"growth": lambda: F("exploding-gradient", W, step=9, first_norm=1.0, peak_norm=500.0,
                                               peak_step=9, growth=500.0)},
    "vanishing-gradient": {"ratio": lambda: F("vanishing-gradient", W, "0", ratio=1e-8)},
    "chance-level-loss": {"high-start": lambda: F("chance-level-loss", W, loss=12.8, chance_loss=1.386,
                                                  n_classes=4, relative_deviation=8.3)},
}


def variants(check: str):
    return [(name, make) for name, make in SAMPLES[check].items()]


def link_id(link) -> str:
    return f"{link.cause}[{link.cause_is.__name__}]->{link.symptom}[{link.symptom_is.__name__}]"


# -------------------------------------------------------------------------- the table
def test_links_name_real_checks_and_say_why():
    for link in LINKS:
        assert link.cause in REGISTRY and link.symptom in REGISTRY, link
        assert link.cause != link.symptom
        assert link.because and not link.because.endswith("."), link
        assert link.cause_is.__doc__ and link.symptom_is.__doc__
    keys = [(l.cause, l.symptom, l.cause_is, l.symptom_is) for l in LINKS]
    assert len(keys) == len(set(keys)), "a link appears twice"
    assert SYMPTOM_ONLY <= set(REGISTRY)


def test_every_sample_check_exists():
    assert set(SAMPLES) <= set(REGISTRY)
    for check in {l.cause for l in LINKS} | {l.symptom for l in LINKS}:
        assert check in SAMPLES, f"no sample findings for {check}"


@pytest.mark.parametrize("link", LINKS, ids=link_id)
def test_link_explains_when_its_condition_holds(link):
    pairs = [(c(), s()) for (_, c), (_, s) in itertools.product(variants(link.cause), variants(link.symptom))]
    holding = [(c, s) for c, s in pairs if link.holds(c, s)]
    assert holding, f"no sample satisfies {link.condition}"
    for cause, symptom in holding:
        if cause.severity is I:
            continue
        report = Report(findings=[symptom, cause])
        assert report.findings[0] is cause, [f.check for f in report.findings]
        assert symptom.explained_by == link.cause
        assert report.diagnosis.cause == link.cause and link.symptom in report.diagnosis.explains
        assert report.diagnosis.because[link.symptom]


@pytest.mark.parametrize("link", LINKS, ids=link_id)
def test_link_does_not_explain_when_its_condition_fails(link):
    # Without the cause, the symptom stands alone.
    for _, make in variants(link.symptom):
        alone = make()
        report = Report(findings=[alone])
        assert alone.explained_by is None
    # With a cause or symptom of another kind, this link does not hold; and where no other
    # link does either, the symptom is not explained.
    if link.cause_is is ANY and link.symptom_is is ANY:
        return
    failing = [(c(), s()) for (_, c), (_, s) in itertools.product(variants(link.cause), variants(link.symptom))
               if not link.holds(c(), s())]
    assert failing, f"the samples never make {link.condition} fail"
    for cause, symptom in failing:
        Report(findings=[symptom, cause])
        if not explaining_links(cause, symptom):
            assert symptom.explained_by is None, (link.condition, cause.evidence, symptom.evidence)


def test_no_two_findings_explain_each_other():
    samples = [make() for check in SAMPLES for _, make in variants(check)]
    for a, b in itertools.combinations(samples, 2):
        assert not (explaining_links(a, b) and explaining_links(b, a)), (a.check, a.evidence, b.check, b.evidence)


def test_the_link_conditions_read_json_evidence_too():
    """Evidence read back from JSON has "inf"/"nan" strings and lists: same verdicts."""
    samples = [make() for check in SAMPLES for _, make in variants(check)]
    back = [Finding.from_dict(json.loads(json.dumps(f.to_dict()))) for f in samples]
    for (a, a2), (b, b2) in itertools.permutations(zip(samples, back), 2):
        assert explaining_links(a, b) == explaining_links(a2, b2), (a.check, b.check)


# -------------------------------------------------------------------------- ranking, order
def test_a_warning_cause_leads_the_errors_it_explains():
    """0-255 inputs: the activation-std and update-ratio errors rank below the warning."""
    cause = SAMPLES["input-normalization"]["unscaled"]()
    acts, ratio = SAMPLES["activation-std"]["exploding"](), SAMPLES["update-ratio"]["high"]()
    other = SAMPLES["repeated-batch"]["same"]()
    note = SAMPLES["label-distribution"]["imbalance"]()
    report = Report(findings=[note, other, ratio, acts, cause])
    assert [f.check for f in report.findings] == [
        "input-normalization", "activation-std", "update-ratio", "repeated-batch", "label-distribution"]
    assert acts.explained_by == ratio.explained_by == "input-normalization"
    assert other.explained_by is None and note.explained_by is None
    d = report.diagnosis
    assert (d.cause, d.confidence, d.explains, d.confirmed) == (
        "input-normalization", "high", ["activation-std", "update-ratio"], None)
    assert "normalised" in d.summary and "standardise" in d.summary
    # the exit status follows severity over all findings: errors exist
    assert report.worst() is E and len(report.errors) == 2


def test_an_error_with_nothing_to_do_with_a_warning_cause_leads_it():
    cause = SAMPLES["input-normalization"]["unscaled"]()
    chance = SAMPLES["chance-level-loss"]["high-start"]()
    frozen = SAMPLES["frozen-layer"]["not-in-optimizer"]()
    report = Report(findings=[cause, chance, frozen])
    assert [f.check for f in report.findings] == ["frozen-layer", "input-normalization", "chance-level-loss"]
    assert chance.explained_by == "input-normalization" and report.diagnosis.cause == "frozen-layer"
    assert candidates(report.findings) == ["frozen-layer", "input-normalization"]


def test_chains_are_explained_by_the_root():
    lr = SAMPLES["lr-sweep"]["too-high"]()
    ratio = SAMPLES["update-ratio"]["high"]()
    grads = SAMPLES["exploding-gradient"]["growth"]()
    nan = SAMPLES["nan-trace"]["in-backward"]()
    gc = SAMPLES["gradient-check"]["non-finite"]()
    report = Report(findings=[gc, nan, grads, ratio, lr])
    assert report.findings[0] is lr
    assert {f.explained_by for f in report.findings[1:]} == {"lr-sweep"}
    assert set(report.diagnosis.explains) == {"update-ratio", "exploding-gradient", "nan-trace", "gradient-check"}


def test_nan_made_in_the_loss_leads_its_consequences():
    """log(0) in a hand-written loss: not an explosion 'from a zero base', not a wrong backward."""
    nan = SAMPLES["nan-trace"]["in-loss"]()
    grads = SAMPLES["exploding-gradient"]["growth"]()
    gc = SAMPLES["gradient-check"]["non-finite"]()
    ratio = SAMPLES["update-ratio"]["high"]()
    report = Report(findings=[ratio, gc, grads, nan])
    assert report.diagnosis.cause == "nan-trace"
    assert all(f.explained_by == "nan-trace" for f in report.findings[1:])


def test_nan_from_blown_weights_follows_the_update():
    nan = SAMPLES["nan-trace"]["blown-weights"]()
    ratio = SAMPLES["update-ratio"]["high"]()
    report = Report(findings=[nan, ratio])
    assert report.diagnosis.cause == "update-ratio" and nan.explained_by == "update-ratio"


def test_same_check_findings_lead_together():
    first = F("dead-relu", E, "1", dead_fraction=1.0)
    second = F("dead-relu", W, "3", dead_fraction=0.56)
    acts = SAMPLES["activation-std"]["vanishing"]()
    report = Report(findings=[acts, second, first])
    assert report.findings == [first, second, acts]
    assert second.explained_by is None and acts.explained_by == "dead-relu"
    assert report.diagnosis.explains == ["activation-std"]


def test_a_symptom_only_check_leads_with_low_confidence():
    report = Report(findings=[SAMPLES["loss-not-decreasing"]["flat"]()])
    assert report.diagnosis.cause == "loss-not-decreasing" and report.diagnosis.confidence == "low"


def test_confidence_medium_for_a_lone_warning_cause():
    report = Report(findings=[SAMPLES["repeated-batch"]["same"]()])
    assert report.diagnosis.confidence == "medium"


def test_no_diagnosis_without_a_warning():
    assert Report().diagnosis is None
    note = SAMPLES["frozen-layer"]["deliberate"]()
    loss = F("loss-not-decreasing", I)
    report = Report(findings=[loss, note])
    assert report.diagnosis is None and note.explained_by is None and loss.explained_by is None


def test_info_findings_never_lead_but_can_be_explained():
    note = F("random-input-loss", I, holdout_gain=0.0, n_holdout=16)
    cause = SAMPLES["loss-input-format"]["softmax-ce"]()
    report = Report(findings=[note, cause])
    assert report.findings == [cause, note] and note.explained_by == "loss-input-format"
    assert report.diagnosis.explains == ["random-input-loss"]


def test_sorting_again_changes_nothing():
    findings = [make() for check in ("input-normalization", "activation-std", "lr-sweep", "update-ratio")
                for _, make in variants(check)]
    report = Report(findings=list(findings))
    order = [id(f) for f in report.findings]
    marks = [f.explained_by for f in report.findings]
    d = report.diagnosis.to_dict()
    report.sort()
    assert [id(f) for f in report.findings] == order and [f.explained_by for f in report.findings] == marks
    assert report.diagnosis.to_dict() == d


def test_merge_diagnoses_across_watch_and_checkup():
    """The checkup's lr-sweep explains the watch's update-ratio once the two are merged."""
    watch = Report(findings=[SAMPLES["update-ratio"]["high"]()], checks_run=["update-ratio"])
    checkup = Report(findings=[SAMPLES["lr-sweep"]["too-high"]()], checks_run=["lr-sweep"])
    assert watch.diagnosis.cause == "update-ratio"
    merged = watch.merge(checkup)
    assert merged.diagnosis.cause == "lr-sweep" and merged.findings[1].explained_by == "lr-sweep"


def test_a_confirmation_survives_sort_merge_and_json():
    report = Report(findings=[SAMPLES["input-normalization"]["unscaled"](), SAMPLES["activation-std"]["exploding"]()])
    report.diagnosis.confirm("inputs standardised", "overfit-tiny-batch", "not fitted in 100 steps",
                             "fitted in 37 steps")
    report.sort()
    assert report.diagnosis.confirmed["after"] == "fitted in 37 steps"
    merged = report.merge(Report(findings=[SAMPLES["chance-level-loss"]["high-start"]()]))
    assert merged.diagnosis.confirmed["intervention"] == "inputs standardised"
    back = Report.from_dict(json.loads(merged.to_json()))
    assert back.diagnosis.to_dict() == merged.diagnosis.to_dict()
    # a different cause drops the confirmation of the old one
    other = merged.merge(Report(findings=[SAMPLES["frozen-layer"]["all-frozen"]()]))
    assert other.diagnosis.cause == "frozen-layer" and other.diagnosis.confirmed is None


def test_diagnosis_from_dict_tolerates_missing_fields():
    assert Diagnosis.from_dict(None) is None
    d = Diagnosis.from_dict({"cause": "grad-not-zeroed"})
    assert d.cause == "grad-not-zeroed" and d.explains == [] and d.confirmed is None


def test_diagnose_works_on_a_bare_list():
    findings = [SAMPLES["activation-std"]["exploding"](), SAMPLES["weight-init"]["large"]()]
    d = diagnose(findings)
    assert findings[0].check == "weight-init" and d.cause == "weight-init"
    assert findings[1].explained_by == "weight-init"


# -------------------------------------------------------------------------- JSON and console
def _full_report() -> Report:
    return Report(
        findings=[SAMPLES["activation-std"]["exploding"](), SAMPLES["input-normalization"]["unscaled"](),
                  SAMPLES["unused-parameter"]["never-called"](), SAMPLES["repeated-batch"]["same"]()],
        checks_run=["activation-std", "input-normalization", "unused-parameter", "repeated-batch"],
        steps_observed=30, model={"class": "Net", "parameters": 10, "trainable": 10}, script="train.py",
    )


def test_json_schema_2_round_trips_and_validates():
    report = _full_report()
    data = json.loads(report.to_json())
    jsonschema.validate(data, SCHEMA)
    assert data["schema"] == 2
    assert [f["check"] for f in data["findings"]][:2] == ["input-normalization", "activation-std"]
    assert data["findings"][1]["explained_by"] == "input-normalization"
    assert data["findings"][0]["explained_by"] is None
    assert data["diagnosis"]["cause"] == "input-normalization" and data["diagnosis"]["confirmed"] is None
    back = Report.from_dict(data)
    assert [f.to_dict() for f in back.findings] == data["findings"]
    assert back.diagnosis.to_dict() == data["diagnosis"]
    assert json.loads(back.to_json()) == data


def test_schema_1_documents_still_load_and_validate():
    data = json.loads(_full_report().to_json())
    old = {k: v for k, v in data.items() if k != "diagnosis"}
    old["schema"] = 1
    old["findings"] = [{k: v for k, v in f.items() if k != "explained_by"} for f in old["findings"]]
    jsonschema.validate(old, SCHEMA)
    back = Report.from_dict(old)
    assert back.diagnosis.cause == "input-normalization"  # recomputed from the findings
    assert back.findings[1].explained_by == "input-normalization"


def test_schema_rejects_a_malformed_diagnosis():
    data = json.loads(_full_report().to_json())
    data["diagnosis"]["confidence"] = "certain"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, SCHEMA)
    data = json.loads(Report().to_json())
    assert data["diagnosis"] is None
    jsonschema.validate({**data, "model": {"class": "X", "parameters": 0, "trainable": 0}}, SCHEMA)


def _render(report: Report) -> str:
    buf = io.StringIO()
    print_report(report, console=Console(file=buf, width=100, color_system=None))
    return buf.getvalue()


def test_console_leads_with_the_diagnosis_block():
    text = _render(_full_report())
    blocks = text.split("\n\n")
    assert blocks[0].startswith("nndoctor")  # the header, then the diagnosis leads
    first = " ".join(blocks[1].split())
    assert first.startswith("Diagnosis: input-normalization (high confidence) — The inputs are not normalised")
    assert first.count("explains: activation-std") == 1 and "repeated-batch" not in first
    assert "activation-std (explained by input-normalization): the first layers' outputs scale" in first


def test_console_shows_a_confirmation_and_no_block_without_diagnosis():
    report = _full_report()
    report.diagnosis.confirm("inputs standardised", "overfit-tiny-batch", "not fitted in 100 steps",
                             "fitted in 37 steps")
    assert "confirmed: with inputs standardised" in " ".join(_render(report).split())
    assert "Diagnosis:" not in _render(Report(findings=[F("frozen-layer", I, kind="requires_grad_false")]))


@pytest.mark.parametrize("check", sorted(SAMPLES))
def test_every_cause_gets_a_one_sentence_summary(check):
    for name, make in variants(check):
        f = make()
        if f.severity is I:
            continue
        d = Report(findings=[f]).diagnosis
        assert not d.summary[0].islower() and d.summary.endswith(".") and "\n" not in d.summary, (name, d.summary)


def test_summary_keeps_the_names_in_the_fix():
    f = SAMPLES["nan-trace"]["in-loss"]()
    f.fix = "Compute the loss with CrossEntropyLoss on the logits. Or clamp."
    s = Report(findings=[f]).diagnosis.summary
    assert s.endswith("compute the loss with CrossEntropyLoss on the logits.")


def test_an_lr_too_high_that_a_lower_lr_fits_leads_the_vanishing_gradient_it_causes():
    """nlp-tutorial's Transformer at Adam 1e-3: the encoder's gradient vanishes, the real
    inputs give no advantage and the tiny batch stalls, while x0.1 fits the sweep's samples
    (100% of the loss removed). The LR is the root cause; the rest are its symptoms."""
    sweep = SAMPLES["lr-sweep"]["too-high-lower-fits"]()
    findings = [
        SAMPLES["vanishing-gradient"]["ratio"](),
        SAMPLES["random-input-loss"]["inputs-carry-nothing"](),
        F("overfit-tiny-batch", E, progress=0.26),
        sweep,
    ]
    report = Report(findings=findings)
    assert report.diagnosis.cause == "lr-sweep", [f.check for f in report.findings]
    assert {"vanishing-gradient", "random-input-loss", "overfit-tiny-batch"} <= set(report.diagnosis.explains)
    assert sweep.explained_by is None and "inconclusive_because" not in sweep.evidence
    # an LR sweep that has not shown a lower LR fitting stays explained by unused inputs
    weak = SAMPLES["lr-sweep"]["too-high"]()
    Report(findings=[weak, SAMPLES["random-input-loss"]["inputs-carry-nothing"]()])
    assert weak.explained_by == "random-input-loss"


def test_a_large_init_leads_the_too_large_updates_it_causes():
    """Weights drawn with std 1 (8-11x He) under SGD lr 0.1, as in the canonical bug of
    benchmarks/canonical_bugs.py: the activations explode from step 0, the gradients that
    scale with them make updates 0.14 of the weights, the tiny batch diverges. The
    update ratio is a consequence of the init (measured before any update), not the
    cause; with the ratio too high the init still explains it."""
    init = F("weight-init", W, kind="large", weights=["fc1.weight", "fc2.weight"])
    findings = [
        F("update-ratio", W, direction="high", median_ratio=0.14),
        F("activation-std", W, worst_std=69.7, band=[0.5, 2.0]),
        F("chance-level-loss", W, loss=818.0, chance_loss=2.3),
        F("overfit-tiny-batch", W, verdict="optimizer_settings", progress=0.0),
        init,
    ]
    report = Report(findings=findings)
    assert report.diagnosis.cause == "weight-init", [(f.check, f.explained_by) for f in report.findings]
    assert {"update-ratio", "activation-std", "chance-level-loss"} <= set(report.diagnosis.explains)
    # an update ratio too high on a healthy init stays a cause of its own
    alone = Report(findings=[F("update-ratio", W, direction="high", median_ratio=0.14),
                             F("activation-std", W, worst_std=69.7, band=[0.5, 2.0])])
    assert alone.diagnosis.cause == "update-ratio"


def test_destructive_updates_lead_the_collapsed_activations_they_cause():
    """Adam at lr 1 on a small CNN (a red-team script): the first updates are 0.4 of the
    weights, the ReLUs behind them switch off (activation std 0: an error) and the tiny
    batch stalls. The learning rate leads, not the activation scale (whose fix, 'He init,
    BatchNorm', was the wrong advice)."""
    ratio = F("update-ratio", W, "0", median_ratio=0.42, early_median_ratio=0.42, direction="high")
    acts = F("activation-std", E, worst_std=0.0, band=[0.5, 2.0])
    report = Report(findings=[acts, F("overfit-tiny-batch", W, progress=0.4), ratio])
    assert report.diagnosis.cause == "update-ratio" and acts.explained_by == "update-ratio"
    # a mildly high ratio does not explain activations that vanish
    mild = F("update-ratio", W, "0", median_ratio=0.012, early_median_ratio=0.012, direction="high")
    acts2 = F("activation-std", E, worst_std=0.0, band=[0.5, 2.0])
    assert Report(findings=[acts2, mild]).diagnosis.cause == "activation-std"


def test_a_summary_is_not_cut_inside_brackets_code_or_after_e_g():
    from nndoctor._diagnosis import _first_sentence
    assert _first_sentence("Set requires_grad=True (e.g. a leftover; keep it). More.") == \
        "Set requires_grad=True (e.g. a leftover; keep it)"
    assert _first_sentence("Layers (`fc1` (Linear; 10 params)) are frozen; unfreeze them.") == \
        "Layers (`fc1` (Linear; 10 params)) are frozen"
    assert _first_sentence("Use `x.clamp_min(1e-8). log()` there. Then") == "Use `x.clamp_min(1e-8). log()` there"
    assert _first_sentence("One sentence.") == "One sentence"


def test_an_overfit_error_under_an_lr_that_x0_1_fits_becomes_a_warning():
    """The overfit probe's verdict 'a bug, not tuning' (neither your optimizer nor the
    stand-in fitted the batch) is refuted when the LR sweep fitted the samples at x0.1:
    it is the learning rate's symptom, a warning; re-diagnosing restores it first."""
    sweep = SAMPLES["lr-sweep"]["too-high-lower-fits"]()
    overfit = F("overfit-tiny-batch", E, verdict="bug", progress=0.2)
    report = Report(findings=[overfit, sweep])
    assert report.diagnosis.cause == "lr-sweep"
    assert overfit.severity is W and overfit.explained_by == "lr-sweep" and "x0.1" in overfit.message
    Report(findings=[overfit, sweep])  # idempotent
    assert overfit.severity is W and overfit.message.count("The LR sweep fitted") == 1
    # a sweep that has not shown x0.1 fitting leaves the error alone
    weak = F("overfit-tiny-batch", E, verdict="bug", progress=0.2)
    Report(findings=[weak, SAMPLES["lr-sweep"]["too-high"]()])
    assert weak.severity is E
