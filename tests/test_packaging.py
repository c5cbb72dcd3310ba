"""The installed package is self-contained: its embedded default is found with importlib.resources
(never the repository's data/), its version is the distribution's, and data/scripts still make
the embedded files. (make wheel-test installs the built wheel in a fresh venv and runs it.)"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
import tomllib

import spectra
from spectra import default, recipes

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "data" / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


def test_the_default_is_a_resource_of_the_package() -> None:
    package = Path(spectra.__file__).parent
    assert Path(str(files("spectra.default"))) == package / "default" == default.ROOT
    assert recipes.DEFAULT_MODEL == default.MODEL == package / "default" / "tiny-llama"
    assert recipes.DEFAULT_DATA == default.DATA == package / "default" / "math_qa.jsonl"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in default.MODEL.iterdir()
    }
    assert not (REPO / "data" / "tiny-llama").exists()
    assert not (REPO / "data" / "math_qa.jsonl").exists()


def test_package_data_lists_every_default_file() -> None:
    """setuptools ships what pyproject's package-data names: every file of spectra/default."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["spectra.default"]
    shipped = {p for pattern in patterns for p in default.ROOT.glob(pattern) if p.is_file()}
    on_disk = {p for p in default.ROOT.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    on_disk -= {default.ROOT / "__init__.py"}
    assert shipped == on_disk


@pytest.mark.slow
def test_a_copy_of_the_package_alone_plans_the_default_track(tmp_path) -> None:
    """Nothing but the package folder: track's plan takes the model and data inside it."""
    shutil.copytree(REPO / "spectra", tmp_path / "site" / "spectra")
    work = tmp_path / "work"
    work.mkdir()
    code = (
        "import spectra, spectra.recipes as r; "
        "job = r.plan(methods=('lora',), steps=1, device='cpu', out='runs'); "
        "print(spectra.__file__); print(job.model); print(job.data)"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    module, model, data = done.stdout.splitlines()
    copy = tmp_path / "site" / "spectra"
    assert Path(module) == copy / "__init__.py"
    assert Path(model) == copy / "default" / "tiny-llama"
    assert Path(data) == copy / "default" / "math_qa.jsonl"


def test_version_is_the_distributions(cli) -> None:
    version = importlib.metadata.version("spectra-drift")
    assert version == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert spectra.__version__ == version
    assert cli(["--version"]) == (0, f"spectra {version}\n", "")


@pytest.mark.slow
def test_track_with_a_missing_model_folder_says_so(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "spectra", "track", "--model", "./missing"],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "error: ./missing: no such model folder\n"
    assert not (tmp_path / "runs").exists()


def test_the_scripts_write_into_the_package_and_reproduce_the_data(tmp_path) -> None:
    mathgen = _script("mathgen")
    assert mathgen.DEFAULT == default.DATA
    assert _script("pretrain").DEFAULT == default.MODEL
    out = tmp_path / "math_qa.jsonl"
    subprocess.run(
        [sys.executable, SCRIPTS / "mathgen.py", "--seed", "0", "--n", "4000", "--out", out],
        check=True,
        capture_output=True,
    )
    assert out.read_bytes() == default.DATA.read_bytes()
