"""What spectra loads before it answers: reading and drawing runs load no torch, `track`
refuses a missing model or a resource bomb in its options or model config before torch and
transformers load, and `import` refuses a backtracking pattern in an adapter config before peft
loads."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from importlib.resources import files

import pytest
from import_inputs import CATASTROPHIC
from peft import LoraConfig, get_peft_model
from tiny_models import base_model

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


@pytest.mark.parametrize("model", ["./missing", "no/such/folder", "a b"])
def test_track_refuses_a_missing_model_before_torch_loads(model, tmp_path):
    assert heavy_loaded(refused("track", "--model", model, "--out", str(tmp_path))) == []


@pytest.mark.parametrize("field", ["target_modules", "exclude_modules", "rank_pattern"])
def test_import_refuses_a_backtracking_pattern_before_peft_loads(field, tmp_path):
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    get_peft_model(base_model("llama"), lora).save_pretrained(tmp_path / "lora")
    base_model("llama").save_pretrained(tmp_path / "base")
    config = tmp_path / "lora" / "adapter_config.json"
    value = {CATASTROPHIC: 4} if field == "rank_pattern" else CATASTROPHIC
    config.write_text(json.dumps(json.loads(config.read_text()) | {field: value}))
    argv = ("import", str(tmp_path / "lora"), "--base", str(tmp_path / "base"),
            "--out", str(tmp_path / "runs"))  # fmt: skip
    assert heavy_loaded(refused(*argv)) == ["torch"]  # not transformers, not peft


def test_compute_refuses_a_deep_manifest_before_torch_loads(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("[" * 10_000 + "]" * 10_000)
    assert heavy_loaded(refused("compute", str(run))) == []
