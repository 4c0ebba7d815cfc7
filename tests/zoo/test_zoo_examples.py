"""Every examples/zoo_*.py script runs as a plain script, and with every --inject fault.

The plain runs happen in a subprocess: a fresh interpreter that runs each script as
``__main__`` with its own argv (one script also runs entirely on its own, as a user would). The fault matrix runs in-process through each script's
``main(argv)`` to avoid paying torch's import ~60 times; a planted fault may make the loss NaN
or huge (that is the point), but it must not crash the script.
"""

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

ALL = ("lr-x100", "softmax-before-loss", "frozen-backbone", "unnormalized-input", "no-zero-grad", "nan-log")
NO_SOFTMAX = tuple(f for f in ALL if f != "softmax-before-loss")
# script → (extra args for a fast run, faults it accepts)
SCRIPTS = {
    "zoo_rotnet.py": ([], ALL),
    "zoo_jigsaw.py": ([], ALL),
    "zoo_relative_patch.py": ([], ALL),
    "zoo_exemplar.py": (["--batch-size", "16"], ALL),
    "zoo_autoencoder.py": (["--task", "colorization"], ALL),
    "zoo_counting.py": ([], NO_SOFTMAX),
    "zoo_multitask.py": ([], ALL),
    "zoo_deepcluster.py": (["--epoch-steps", "2"], ALL),
    "zoo_linear_eval.py": ([], tuple(f for f in ALL if f != "frozen-backbone")),  # frozen by design
    "zoo_yolov3.py": (["--images", "8", "--batch-size", "4"], NO_SOFTMAX),
    "zoo_efficientdet.py": (["--images", "4", "--batch-size", "2"], NO_SOFTMAX),
}
AUTOENCODER_TASKS = ("denoising", "context", "split-brain")  # colorization is in SCRIPTS


def test_table_covers_every_example_script():
    assert sorted(p.name for p in EXAMPLES.glob("zoo_*.py")) == sorted(SCRIPTS)


# Runs each script as ``__main__`` with its own sys.argv, in one fresh interpreter: one torch
# import instead of fifteen (2-core CI boxes spend most of a subprocess in imports).
_DRIVER = r"""
import json, runpy, sys, traceback, io, contextlib
results = {}
for key, path, argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    sys.argv = [path, *argv]
    sys.path[0] = path.rsplit("/", 1)[0]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(path, run_name="__main__")
        results[key] = [0, out.getvalue(), ""]
    except SystemExit as exc:
        results[key] = [exc.code if isinstance(exc.code, int) else 2, out.getvalue(), str(exc)]
    except BaseException:
        results[key] = [1, out.getvalue(), traceback.format_exc()]
print("RESULTS" + json.dumps(results))
"""


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def plain_runs():
    """Every script (and the benchmark) with --steps 3, run as ``__main__`` in a fresh interpreter."""
    import json

    jobs = [(name, str(EXAMPLES / name), ["--steps", "3", *extra]) for name, (extra, _) in SCRIPTS.items()]
    jobs += [(f"zoo_autoencoder.py --task {t}", str(EXAMPLES / "zoo_autoencoder.py"), ["--steps", "3", "--task", t]) for t in AUTOENCODER_TASKS]
    bench = ["--workloads", "rotnet", "yolov3", "--steps", "1", "--warmup", "0"]
    jobs.append(("benchmarks/zoo_throughput.py", str(REPO / "benchmarks" / "zoo_throughput.py"), bench))
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(jobs)], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    marker = proc.stdout.rfind("RESULTS")
    assert marker >= 0, f"the driver died (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout[marker + len("RESULTS") :])


@pytest.mark.parametrize("key", [*SCRIPTS, *(f"zoo_autoencoder.py --task {t}" for t in AUTOENCODER_TASKS), "benchmarks/zoo_throughput.py"])
def test_script_runs_as_main(plain_runs, key):
    code, out, err = plain_runs[key]
    assert code == 0, f"{key} exited {code}\nstdout:\n{out}\nerror:\n{err}"
    assert "nan" not in out.lower(), f"a healthy run printed NaN:\n{out}"
    assert out.strip(), "the script printed nothing"


def test_a_script_runs_standalone_in_its_own_subprocess():
    # the literal `python examples/zoo_yolov3.py --steps 3` a user types
    proc = subprocess.run([sys.executable, str(EXAMPLES / "zoo_yolov3.py"), "--steps", "3", "--images", "8", "--batch-size", "4"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step    2" in proc.stdout and "detections after NMS" in proc.stdout


def test_examples_import_nothing_from_nndoctor_but_the_zoo():
    for path in EXAMPLES.glob("zoo_*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import nndoctor", "from nndoctor")):
                assert stripped.startswith(("from nndoctor.zoo", "import nndoctor.zoo")), f"{path.name}: {stripped}"


_loaded = {}


def _main(script):
    if script not in _loaded:
        _loaded[script] = runpy.run_path(str(EXAMPLES / script))["main"]  # not run as __main__
    return _loaded[script]


@pytest.mark.parametrize("script, fault", [(s, f) for s, (_, faults) in SCRIPTS.items() for f in faults])
def test_script_survives_every_injected_fault(script, fault, capsys):
    extra, _ = SCRIPTS[script]
    torch.manual_seed(0)
    _main(script)(["--steps", "2", *extra, "--inject", fault])
    out = capsys.readouterr().out
    assert "step    0" in out


def test_scripts_declare_the_faults_the_table_expects():
    for script, (_, faults) in SCRIPTS.items():
        declared = runpy.run_path(str(EXAMPLES / script))["FAULTS"]
        assert set(faults) <= set(declared), script


def test_softmax_fault_is_refused_for_a_regression_task(capsys):
    with pytest.raises(SystemExit):
        _main("zoo_autoencoder.py")(["--task", "denoising", "--inject", "softmax-before-loss", "--steps", "1"])
    assert "classification task" in capsys.readouterr().err


def test_cuda_request_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit, match="cuda"):
        _main("zoo_rotnet.py")(["--device", "cuda", "--steps", "1"])
