"""The step-0 SVD cache is checked and contained: a wrong or damaged entry is computed again
(one warning line) and never used, a symlink planted in the cache is never written through, and
a cache that cannot be written is not used (one warning line); results always equal a clean
computation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import tmpfs
from runmaker import LAYER, make_run_dir
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import spectra.engine.svd_cache as svd_cache_module
from spectra.engine import base_path, compute_run, weight_key
from spectra.metrics import SVD, svd
from spectra.snapshots import open_run
from spectra.store import read_run


def rows_of(path) -> pd.DataFrame:
    return read_run(path)[0]


def entry_of(cache: Path, run_dir: Path) -> Path:
    """Where the cache keeps the SVD of ``run_dir``'s step-0 weight."""
    return base_path(cache, weight_key(open_run(run_dir).weight(0, LAYER)))


def clean_rows(tmp_path: Path, run_dir: Path) -> pd.DataFrame:
    """The rows of ``run_dir`` computed with a fresh cache of their own."""
    return rows_of(compute_run(run_dir, tmp_path / "clean.parquet", cache_dir=tmp_path / "fresh"))


def rewrite(entry: Path, change) -> None:
    """Rewrite a cache entry with ``change(tensors, metadata)`` applied (both dicts)."""
    tensors = load_file(entry)
    with safe_open(str(entry), "pt") as f:
        metadata = f.metadata() or {}
    change(tensors, metadata)
    entry.unlink()
    save_file(tensors, entry, metadata=metadata)


def forge(tensors: dict, metadata: dict, base: SVD) -> None:
    """Put ``base`` in an entry with a digest that matches it (only its key says whose it is)."""
    tensors.update(u=base.u.contiguous(), s=base.s.contiguous(), vh=base.vh.contiguous())
    metadata["digest"] = svd_cache_module.svd_digest(base)


@pytest.fixture
def runs(tmp_path, svd_cache):
    """Runs a and b (other weights), each computed once so the cache holds both entries."""
    a, b = make_run_dir(tmp_path, "a", seed=0), make_run_dir(tmp_path, "b", seed=1)
    for run in (a, b):
        compute_run(run)
        (tmp_path / f"{run.name}.parquet").unlink()
    return a, b


def scramble(tensors, metadata):
    tensors["u"] = tensors["u"][:, [1, 0, 2, 3]].contiguous()


def perturb(tensors, metadata):
    tensors["vh"] = tensors["vh"] + 1e-3


def as_float32(tensors, metadata):
    for name in tensors:
        tensors[name] = tensors[name].float()


def forged_other(tensors, metadata):
    """The SVD of another matrix, passed off with a matching digest."""
    forge(tensors, metadata, svd(torch.randn(6, 4, dtype=torch.float64)))


def forged_not_orthonormal(tensors, metadata):
    """U Σ Vᵀ is W_0, but U is not orthonormal (U scaled by 2, Σ by 1/2), digest matching."""
    forge(tensors, metadata, SVD(tensors["u"] * 2, tensors["s"] / 2, tensors["vh"]))


def forged_nan(tensors, metadata):
    forge(tensors, metadata, SVD(tensors["u"], tensors["s"] * float("nan"), tensors["vh"]))


DAMAGE = {
    "another matrix's entry": None,  # b's place holds a's entry, as it was written
    "scrambled vectors": scramble,
    "perturbed vectors": perturb,
    "float32": as_float32,
    "forged: another SVD": forged_other,
    "forged: not orthonormal": forged_not_orthonormal,
    "forged: NaN": forged_nan,
    "truncated": "truncated",
    "garbage": "garbage",
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_wrong_entry_is_computed_again_with_one_warning(tmp_path, runs, svd_cache, cli, damage):
    a, b = runs
    want = clean_rows(tmp_path, b)
    entry = entry_of(svd_cache, b)
    change = DAMAGE[damage]
    if change is None:
        entry.write_bytes(entry_of(svd_cache, a).read_bytes())
    elif change == "truncated":
        entry.write_bytes(entry.read_bytes()[:-100])
    elif change == "garbage":
        entry.write_bytes(os.urandom(entry.stat().st_size))
    else:
        rewrite(entry, change)
    result = cli(["compute", b])
    assert result.code == 0, result
    (line,) = result.err.strip().splitlines()
    assert line.startswith("warning: SVD cache entry") and "computing it again" in line
    pd.testing.assert_frame_equal(rows_of(tmp_path / "b.parquet"), want)
    w0 = open_run(b).weight(0, LAYER)
    found = svd_cache_module.read_entry(entry, weight_key(w0), (6, 4))
    assert not isinstance(found, str)  # replaced: good again


def test_a_symlink_in_the_cache_is_replaced_not_written_through(tmp_path, svd_cache, cli):
    run = make_run_dir(tmp_path, "run")
    entry = entry_of(svd_cache, run)
    entry.parent.mkdir(parents=True)
    victim = tmp_path / "outside" / "precious.safetensors"
    victim.parent.mkdir()
    victim.write_bytes(b"not the cache's")
    entry.symlink_to(victim)
    want = clean_rows(tmp_path, run)
    assert cli(["compute", run]).code == 0
    assert victim.read_bytes() == b"not the cache's"
    assert not entry.is_symlink() and entry.is_file()
    pd.testing.assert_frame_equal(rows_of(tmp_path / "run.parquet"), want)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["fifo", "symlink to a fifo", "symlink to /dev/zero"])
def test_a_fifo_or_device_in_the_cache_does_not_hang(tmp_path, svd_cache, how):
    run = make_run_dir(tmp_path, "run")
    entry = entry_of(svd_cache, run)
    entry.parent.mkdir(parents=True)
    fifo = tmp_path / "fifo"
    os.mkfifo(entry if how == "fifo" else fifo)
    if how != "fifo":
        entry.symlink_to(fifo if "fifo" in how else "/dev/zero")
    command = [sys.executable, "-m", "spectra", "compute", str(run)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "computing it again" in done.stderr
    assert entry.is_file() and not entry.is_symlink()


def a_file(root: Path) -> Path:
    (root / "cache").write_text("x")
    return root / "cache"


def not_creatable(root: Path) -> Path:
    return a_file(root) / "cache"


def svd_a_symlink(root: Path) -> Path:
    (root / "cache").mkdir()
    (root / "elsewhere").mkdir()
    (root / "cache" / "svd").symlink_to(root / "elsewhere")
    return root / "cache"


CACHES = {"a file": a_file, "not creatable": not_creatable, "svd/ a symlink": svd_a_symlink}


@pytest.mark.parametrize("kind", list(CACHES))
def test_an_unusable_cache_is_not_used_with_one_warning(tmp_path, cli, kind):
    run = make_run_dir(tmp_path, "run")
    want = clean_rows(tmp_path, run)
    cache = CACHES[kind](tmp_path)
    result = cli(["compute", run, "--cache-dir", cache])
    assert result.code == 0, result
    (line,) = result.err.strip().splitlines()
    assert line.startswith(f"warning: the SVD cache {cache} cannot be used"), line
    pd.testing.assert_frame_equal(rows_of(tmp_path / "run.parquet"), want)
    assert not (tmp_path / "elsewhere").exists() or not any((tmp_path / "elsewhere").iterdir())


@pytest.fixture
def read_only_cache(tmp_path):
    """A read-only tmpfs (needs root); skipped where it cannot be mounted."""
    with tmpfs(tmp_path / "ro", "ro,size=64k") as mount:
        yield mount


def test_a_read_only_cache_is_not_used_with_one_warning(tmp_path, read_only_cache, cli):
    run = make_run_dir(tmp_path, "run")
    want = clean_rows(tmp_path, run)
    result = cli(["compute", run, "--cache-dir", read_only_cache])
    assert result.code == 0, result
    (line,) = result.err.strip().splitlines()
    assert "cannot be used (Read-only file system)" in line
    pd.testing.assert_frame_equal(rows_of(tmp_path / "run.parquet"), want)


def test_entries_record_their_matrix_and_digest(tmp_path, svd_cache):
    run = make_run_dir(tmp_path, "run")
    compute_run(run)
    entry = entry_of(svd_cache, run)
    with safe_open(str(entry), "pt") as f:
        metadata = f.metadata()
        base = SVD(f.get_tensor("u"), f.get_tensor("s"), f.get_tensor("vh"))
    assert metadata["w0"] == entry.name.removesuffix(".safetensors")
    assert metadata["digest"] == svd_cache_module.svd_digest(base)
    assert json.loads(json.dumps(metadata)) == metadata


def test_an_entry_of_an_older_spectra_is_computed_again_silently(tmp_path, svd_cache, cli):
    run = make_run_dir(tmp_path, "run")
    compute_run(run, tmp_path / "first.parquet")
    entry = entry_of(svd_cache, run)
    save_file(load_file(entry), entry)  # the same tensors, without the metadata
    result = cli(["compute", run])
    assert result.code == 0 and not result.err, result
    with safe_open(str(entry), "pt") as f:
        assert f.metadata()["w0"] == entry.name.removesuffix(".safetensors")
    pd.testing.assert_frame_equal(rows_of(tmp_path / "run.parquet"), clean_rows(tmp_path, run))


def test_an_entry_changed_after_it_was_checked_is_not_used(tmp_path, svd_cache, capsys):
    from spectra.engine.svd_cache import base_task, load_base, open_cache

    a, b = make_run_dir(tmp_path, "a", seed=0), make_run_dir(tmp_path, "b", seed=1)
    cache = open_cache(svd_cache)
    entry, other = base_task(str(b), LAYER, cache), base_task(str(a), LAYER, cache)
    load_base.cache_clear()
    Path(entry.path).write_bytes(Path(other.path).read_bytes())  # swapped after the check
    got = load_base(entry, str(b), LAYER)
    want = svd(open_run(b).weight(0, LAYER))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert "changed while in use" in capsys.readouterr().err
