"""What spectra loads before it answers: reading and drawing runs load no torch, and `track`
refuses a resource bomb in its options or model config before torch and transformers load."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from importlib.resources import files

import pytest

pytestmark = pytest.mark.slow  # subprocesses: not in make test-fast

HEAVY = ("torch", "transformers", "peft")


def heavy_loaded(code: str) -> list[str]:
    """The modules of HEAVY that a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint([m for m in {HEAVY!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return ast.literal_eval(done.stdout.splitlines()[-1])


def refused(*argv: str) -> str:
    """Code running ``spectra *argv`` that asserts exit code 2 (a one-line refusal)."""
    return (
        f"import sys\nfrom spectra.cli import main\nsys.argv = ['spectra', *{argv!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code == 2, exc.code\n"
        "else:\n    raise AssertionError('not refused')"
    )


def test_reading_and_drawing_runs_load_no_torch():
    code = "import spectra.store, spectra.report, spectra.figures, spectra.plotting, spectra.cli"
    assert heavy_loaded(code) == []


def test_the_probe_sees_torch_when_it_loads():
    assert heavy_loaded("import spectra.engine") == ["torch"]


@pytest.mark.parametrize("epochs", ["1e300", "9.3e18", "nan", "-1"])
def test_track_refuses_epochs_before_torch_loads(epochs):
    assert heavy_loaded(refused("track", "--epochs", epochs)) == []


@pytest.mark.parametrize("field", ["hidden_size", "vocab_size", "num_hidden_layers"])
def test_track_refuses_a_config_bomb_before_torch_loads(field, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(files("spectra.default") / "tiny-llama", model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {field: 10**12}))
    assert heavy_loaded(refused("track", "--model", str(model), "--out", str(tmp_path))) == []
