"""Models on the Hub as sources (spectra.hub), against a loopback stand-in for the Hub.

``fake_hub.FakeHub`` serves tiny Llama repositories (a single-file base, sharded fine-tunes
with an index) the way the Hub serves them to huggingface_hub, counts the bytes it serves and
can drop connections or tamper with bytes. Rows are checked against a float64 oracle computed
from the full files on disk.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_hub import FakeHub
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_models import EXPERT_PARAMS, base_model, moe_base, perturb

import spectra.hub.fetch as fetch_module
from spectra.metrics import drift
from spectra.snapshots import open_run

TARGETS = ("q_proj.weight", "v_proj.weight")
TOL = 1e-10
REPOS = ("base", "ft1", "ft2", "qv")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Folders of a tiny Llama: the base in one file, two fine-tunes in shards with an index,
    and a checkpoint of only the q/v weights (every byte of its file is a target's)."""
    root = tmp_path_factory.mktemp("models")
    base = base_model("llama")
    base.save_pretrained(root / "base")
    for name, seed, shard in (("ft1", 1, "40KB"), ("ft2", 2, "64KB")):
        tuned = copy.deepcopy(base)
        perturb(tuned, seed=seed, size=0.05)
        tuned.save_pretrained(root / name, max_shard_size=shard)
    (root / "qv").mkdir()
    shutil.copy(root / "base" / "config.json", root / "qv")
    weights = {k: v for k, v in _weights(root / "ft2").items() if k.endswith(TARGETS)}
    save_file(weights, root / "qv" / "model.safetensors", metadata={"format": "pt"})
    return {name: root / name for name in REPOS}


def _weights(folder: Path) -> dict:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def hub_settings(endpoint: str, hf_home: Path, offline: bool = False) -> dict[str, str]:
    """The environment a user sets: the Hub's address, the Hugging Face home, offline mode."""
    hub_cache = str(hf_home / "hub")
    return {"HF_ENDPOINT": endpoint, "HF_HOME": str(hf_home), "HF_HUB_CACHE": hub_cache,
            "HF_HUB_OFFLINE": "1" if offline else "0"}  # fmt: skip


def use_hub(monkeypatch, endpoint: str, hf_home: Path, offline: bool = False) -> None:
    """Point this process's huggingface_hub at ``endpoint`` and ``hf_home``: the environment a
    fresh process would read, and the constants huggingface_hub read from it when imported."""
    from huggingface_hub import constants

    for name, value in hub_settings(endpoint, hf_home, offline).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    for name, value in {
        "ENDPOINT": endpoint, "HUGGINGFACE_CO_URL_TEMPLATE": template, "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"), "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"), "HF_HUB_OFFLINE": offline,
    }.items():  # fmt: skip
        monkeypatch.setattr(constants, name, value)


@pytest.fixture
def hub(models, tmp_path, monkeypatch):
    """The stand-in Hub serving org/base, org/ft1, org/ft2, org/qv and a gated copy of ft1;
    huggingface_hub pointed at it with an empty Hugging Face home."""
    server = FakeHub(lifetime=300)
    for name in REPOS:
        server.add(f"org/{name}", models[name])
    server.add("org/gated", models["ft1"], gated=401)
    server.add("org/forbidden", models["ft1"], gated=403)
    use_hub(monkeypatch, server.endpoint, tmp_path / "hf")
    monkeypatch.setattr(fetch_module, "PAUSE", 0.01)
    yield server
    server.close()


def oracle(base: Path, tuned: Path) -> dict[str, dict]:
    """{layer: every drift metric} from the full files, in float64."""
    w0, wt = _weights(base), _weights(tuned)
    return {name.removesuffix(".weight"): drift(w0[name].double(), wt[name].double())
            for name in w0 if name.endswith(TARGETS)}  # fmt: skip


def assert_rows_match(parquet: Path, want: dict[str, dict]) -> None:
    rows = pd.read_parquet(parquet)
    last = rows[rows["step"] == rows["step"].max()]
    assert sorted(last["layer"]) == sorted(want)
    for _, row in last.iterrows():
        for name, value in want[row["layer"]].items():
            got = np.asarray(row[name], dtype=float)
            assert np.allclose(got, value, rtol=0, atol=TOL), (row["layer"], name)


def target_bytes(folder: Path) -> tuple[int, int]:
    """(bytes of the q/v tensors, bytes of the safetensors headers) of a model folder."""
    tensors = headers = 0
    for file in folder.glob("*.safetensors"):
        with file.open("rb") as f:
            headers += 8 + int.from_bytes(f.read(8), "little")
        with safe_open(str(file), "pt") as f:
            names = [k for k in f.keys() if k.endswith(TARGETS)]  # noqa: SIM118 (not a dict)
            tensors += sum(int(np.prod(f.get_slice(k).get_shape())) * 4 for k in names)
    return tensors, headers


# --- compare of Hub models ----------------------------------------------------------------------


def test_compare_of_hub_models_fetches_only_target_tensors(hub, models, tmp_path, cli):
    code, out, err = cli(["compare", "org/base", "org/ft1", "org/ft2", "--out", tmp_path / "runs"])
    assert code == 0, err
    assert "Summary" in out and "ft1" in out and "ft2" in out  # one summary of both
    for name in ("ft1", "ft2"):
        assert_rows_match(
            tmp_path / "runs" / f"{name}.parquet", oracle(models["base"], models[name])
        )
        run = open_run(tmp_path / "runs" / name)
        assert run.manifest.referenced == []  # fetched ranges are copied into the run
        source = run.manifest.extra["import"]["steps"]["1"]["source"]
        assert source == f"hf://org/{name}@{hub.repos[f'org/{name}'].commit}"
    needed = [target_bytes(models[name]) for name in ("base", "ft1", "ft2")]
    assert hub.served("cdn") == sum(t + h for t, h in needed)  # the base once: it is cached
    small = sum(f["size"] for n in ("base", "ft1", "ft2")
                for f in hub.repos[f"org/{n}"].files.values() if not f["lfs"])  # fmt: skip
    assert hub.served("resolve") <= small  # config.json and the shard index, once each
    assert all(e["bytes"] < 20_000 for e in hub.log if e["kind"] == "api")
    repo_bytes = sum(f["size"] for r in hub.repos.values() for f in r.files.values()) / 2
    assert hub.served() < repo_bytes / 2

    before = len(hub.log)
    code, _, err = cli(["compare", "org/base", "org/ft1", "--out", tmp_path / "again"])
    assert code == 0, err
    assert sum(e["bytes"] for e in hub.log[before:] if e["kind"] == "cdn") == 0  # all cached


def test_a_terminal_shows_the_bytes_fetched_of_the_whole_repository(hub, tmp_path, monkeypatch):
    """On a terminal, a bar of bytes fetched against the repository's size, cleared at the end
    (off a terminal, nothing: the one-line error tests see a single line on stderr)."""
    import io

    import rich.console

    import spectra.progress as progress_module
    from spectra.importer import import_run

    screen = io.StringIO()
    terminal = rich.console.Console(file=screen, force_terminal=True, width=150)
    monkeypatch.setattr(progress_module, "Console", lambda stderr: terminal)
    import_run(["org/ft1"], "org/base", out=tmp_path, progress=True)
    shown = screen.getvalue()
    repo_kb = sum(f["size"] for f in hub.repos["org/ft1"].files.values()) / 1000
    assert "fetching org/ft1" in shown and f"/{repo_kb:.1f} kB" in shown
    assert shown.rstrip().endswith("\x1b[2K")  # the bar's line erased: cleared when done


def test_an_interrupted_fetch_resumes_where_it_stopped(hub, models, tmp_path, cli):
    """One dropped connection: the retry asks for the rest only. Connections dropped until
    the fetch gives up: one error line, and the next run fetches only what is missing."""
    every = {f["sha256"] for f in hub.repos["org/ft1"].files.values() if f["lfs"]}
    hub.drops = dict.fromkeys(every, 1)
    code, _, err = cli(["compare", "org/base", "org/ft1", "--out", tmp_path / "once"])
    assert code == 0, err
    dropped = [e for e in hub.log if e.get("dropped")]
    assert dropped and {e["path"].strip("/") for e in dropped} <= every
    tensors, headers = target_bytes(models["ft1"])
    ft1 = sum(e["bytes"] for e in hub.log if e["kind"] == "cdn" and e["path"].strip("/") in every)
    assert ft1 == tensors + headers  # what arrived before a drop was kept, never fetched again
    assert_rows_match(tmp_path / "once" / "ft1.parquet", oracle(models["base"], models["ft1"]))

    every = {f["sha256"] for f in hub.repos["org/ft2"].files.values() if f["lfs"]}
    hub.drops = dict.fromkeys(every, 10**6)  # each try gets half of what is left: it gives up
    start = len(hub.log)
    cli(["compare", "org/base", "org/ft2", "--out", tmp_path / "fails"]).error_line(
        "the transfer failed", "run again"
    )
    assert not (tmp_path / "fails" / "ft2").exists()
    hub.drops = {}
    code, _, err = cli(["compare", "org/base", "org/ft2", "--out", tmp_path / "fails"])
    assert code == 0, err
    ft2 = [e for e in hub.log[start:] if e["kind"] == "cdn" and e["path"].strip("/") in every]
    assert sum(e["bytes"] for e in ft2) == sum(target_bytes(models["ft2"]))  # every byte once
    assert_rows_match(tmp_path / "fails" / "ft2.parquet", oracle(models["base"], models["ft2"]))


def test_tampered_bytes_are_refused(hub, models, tmp_path, cli):
    """Every byte of the q/v-only file is fetched, so its SHA-256 on the Hub is checked: tampered
    tensor bytes are refused, and not kept; a tampered header is refused too."""
    file = hub.repos["org/qv"].files["model.safetensors"]
    _, header = target_bytes(models["qv"])
    hub.tampered = {file["sha256"]: header}  # the tensors' bytes, after an intact header
    cli(["compare", "org/base", "org/qv", "--out", tmp_path / "runs"]).error_line(
        "do not hash to the file's hash on the Hub", "org/qv"
    )
    assert not (tmp_path / "runs" / "qv").exists()
    hub.tampered = {}  # the tampered bytes were not kept: the honest bytes are fetched again
    code, _, err = cli(["compare", "org/base", "org/qv", "--out", tmp_path / "runs"])
    assert code == 0, err
    assert_rows_match(tmp_path / "runs" / "qv.parquet", oracle(models["base"], models["qv"]))

    shard = next(f for f in hub.repos["org/ft2"].files.values() if f["lfs"])
    hub.tampered = {shard["sha256"]: 0}  # the header too
    cli(["compare", "org/base", "org/ft2", "--out", tmp_path / "runs2"]).error_line(
        "not a safetensors file"
    )
    hub.tampered, hub.whole = {}, {shard["sha256"]}  # a proxy that ignores ranges
    cli(["compare", "org/base", "org/ft2", "--out", tmp_path / "runs2"]).error_line(
        "the server answered HTTP 200 (it does not serve byte ranges)"
    )


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("org/gated", "a gated model; accept its conditions"),
        ("org/forbidden", "a gated model; accept its conditions"),
        ("org/missing", "no such file or folder, and no such model on"),
        ("org/ft1@nope", "no revision 'nope'"),
    ],
)
def test_hub_errors_are_one_line(hub, tmp_path, cli, source, says):
    cli(["compare", "org/base", source, "--out", tmp_path / "runs"]).error_line(says)
    cli(["import", "org/ft1", "--base", source, "--out", tmp_path / "runs"]).error_line(says)
    assert not list((tmp_path / "runs").glob("*"))


def test_an_unreachable_hub_is_one_line(hub, tmp_path, cli, monkeypatch):
    endpoint = hub.endpoint
    hub.close()  # connection refused from now on
    use_hub(monkeypatch, endpoint, tmp_path / "hf")
    cli(["compare", "org/base", "org/ft1", "--out", tmp_path / "runs"]).error_line(
        f"cannot reach {endpoint}", "org/base"
    )
    use_hub(monkeypatch, endpoint, tmp_path / "hf", offline=True)
    cli(["compare", "org/base", "org/ft1", "--out", tmp_path / "runs"]).error_line(
        "not in the Hugging Face cache"
    )


def test_hub_ids(tmp_path, monkeypatch):
    from spectra.hub import HubId, parse_hub_id, run_names

    assert parse_hub_id("org/name") == HubId("org/name")
    assert parse_hub_id("org/name@refs/pr/1") == HubId("org/name", "refs/pr/1")
    for path in ("./org/name", "/org/name", "a/b/c", "org/name@", "org//name", "org/na me", "x"):
        assert parse_hub_id(path) is None, path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert parse_hub_id("org/name") is None  # an existing path is a path
    assert run_names(["a/ft", "b/ft", "c/other@v1", "d/x@refs/pr/2"]) == [
        "a--ft", "b--ft", "other@v1", "x@refs-pr-2"
    ]  # fmt: skip


def test_adapters_revisions_and_local_sources_mix_with_hub_models(hub, models, tmp_path, cli):
    """A local adapter on a Hub base (its weights fetched by range), an adapter repository on
    the Hub (downloaded whole), and a fine-tune at a revision."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(base_model("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    perturb(model)
    model.save_pretrained(tmp_path / "lora")
    hub.add("org/lora", tmp_path / "lora")
    local = ["import", tmp_path / "lora", "--base", "org/base", "--out", tmp_path / "local"]
    on_hub = ["import", "org/lora", "--base", "org/base", "--out", tmp_path / "hub"]
    for args in (local, on_hub):
        code, _, err = cli(args)
        assert code == 0, err
    a, b = open_run(tmp_path / "local" / "lora"), open_run(tmp_path / "hub" / "lora")
    assert a.manifest.method == b.manifest.method == "lora" and a.layers == b.layers
    for layer in a.layers:
        assert a.weight(1, layer).equal(b.weight(1, layer))
    commit = hub.repos["org/ft1"].commit
    code, _, err = cli(["compare", models["base"], f"org/ft1@{commit}", "--out", tmp_path / "r"])
    assert code == 0, err
    assert_rows_match(
        tmp_path / "r" / f"ft1@{commit}.parquet", oracle(models["base"], models["ft1"])
    )
    assert open_run(tmp_path / "r" / f"ft1@{commit}").manifest.referenced == [0]  # the local base


@pytest.mark.parametrize("original", [False, True], ids=["3-D stacks", "a matrix per expert"])
def test_moe_experts_on_the_hub_import_as_from_files(hub, tmp_path, cli, original):
    """A Mixtral saved with its experts as 3-D stacks (or in the original format, one matrix per
    expert), on the Hub: imported by range reads, every expert's weights equal the import of
    the same files on disk and what transformers' from_pretrained loads."""
    model = moe_base("mixtral")
    model.save_pretrained(tmp_path / "base", save_original_format=original)
    perturb(model, seed=3, size=0.05)
    model.save_pretrained(tmp_path / "ft", save_original_format=original)
    for name in ("base", "ft"):
        hub.add(f"org/moe-{name}", tmp_path / name)
    targets = ",".join(EXPERT_PARAMS)
    for source, base, out in (("org/moe-ft", "org/moe-base", "hub"),
                              (tmp_path / "ft", tmp_path / "base", "disk")):  # fmt: skip
        code, _, err = cli(["import", source, "--base", base, "--targets", targets,
                            "--out", tmp_path / out, "--name", "moe"])  # fmt: skip
        assert code == 0, err
    on_hub, on_disk = open_run(tmp_path / "hub" / "moe"), open_run(tmp_path / "disk" / "moe")
    assert on_hub.layers == on_disk.layers and len(on_hub.layers) == 16  # 2 blocks × 2 × 4
    loaded = dict(type(model).from_pretrained(tmp_path / "ft").named_parameters())
    for layer in on_hub.layers:
        assert on_hub.weight(1, layer).equal(on_disk.weight(1, layer)), layer
        stack, expert = layer.rsplit("[", 1)
        assert on_hub.weight(1, layer).equal(loaded[stack][int(expert[:-1])].double()), layer


# --- the Hugging Face cache ---------------------------------------------------------------------


@pytest.mark.slow  # a fresh process, offline
def test_models_in_the_hugging_face_cache_are_read_there_offline(hub, models, tmp_path, cli):
    """The cache filled by huggingface_hub's own snapshot_download; then the Hub gone and
    HF_HUB_OFFLINE=1 in a fresh process: compare reads the cache, by reference."""
    from huggingface_hub import snapshot_download

    for name in ("base", "ft1", "ft2"):
        snapshot_download(f"org/{name}")
    start = len(hub.log)
    code, _, err = cli(["compare", "org/base", "org/ft1", "--out", tmp_path / "online"])
    assert code == 0, err
    assert all(e["kind"] == "api" for e in hub.log[start:])  # online: only the model info
    assert open_run(tmp_path / "online" / "ft1").manifest.referenced == [0, 1]
    hub.close()
    env = os.environ | hub_settings("http://127.0.0.1:9", tmp_path / "hf", offline=True)
    env |= {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "spectra", "compare", "org/base", "org/ft1", "org/ft2",
         "--out", str(tmp_path / "offline")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    hf_hub = tmp_path / "hf" / "hub"
    for name in ("ft1", "ft2"):
        assert_rows_match(
            tmp_path / "offline" / f"{name}.parquet", oracle(models["base"], models[name])
        )
        run = open_run(tmp_path / "offline" / name)
        assert run.manifest.referenced == [0, 1]  # nothing copied: the cache's files are read
        for step in (0, 1):
            refs = json.loads((run.path / f"step_{step:08d}.reference.json").read_text())
            assert all(Path(r["file"]).is_relative_to(hf_hub) for r in refs["tensors"].values())
