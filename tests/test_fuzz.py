"""Fuzzing: crafted manifests, step files and Parquet metadata fed to compute, compute --follow,
analyze and plot, and crafted safetensors headers, shard indexes and adapter configs fed to
import, end in a result or in SpectraError, never in any other exception; imports also never
hang (each example is bounded in time) and never read a file outside their inputs; crafted
SVD cache entries are computed again (or used, when they are an SVD of W_0), and the rows
equal a clean computation."""

from __future__ import annotations

import copy
import faulthandler
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from import_inputs import ADAPTER_CONFIG, CATASTROPHIC, SECRET, SHARDS, make_import_inputs
from runmaker import LAYER, damage_tensors, make_run, make_run_dir, parallel
from safetensors.torch import save

import spectra.engine.svd_cache as svd_cache_module
from spectra.columns import SCHEMA
from spectra.engine import base_path, compute_run, weight_key
from spectra.errors import SpectraError
from spectra.follow import compute_until_finished
from spectra.importer import import_run
from spectra.metrics import SVD, svd
from spectra.plotting import plot_runs
from spectra.report import render
from spectra.run_files import FROZEN, MANIFEST, step_file
from spectra.snapshots import open_run
from spectra.store import load_runs, read_run

pytestmark = pytest.mark.slow  # multi-process, training or long runs: not in make test-fast
FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
KINDS = ("dense", "lowrank", "dora")
DELETE = object()
TRICKY = st.sampled_from(["", "\n", "\ud800", "a\x00b", "é", "../..", "runs/*"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2**63) | st.floats() | st.text(max_size=6) | TRICKY,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.uint8,
          torch.bool, torch.complex64)  # fmt: skip


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    for kind in KINDS:
        make_run_dir(root, kind, kind)
    make_run(root / "parquet", "a", "ft", parallel(0.1))
    make_run(root / "parquet", "b", "sorsa", parallel(0.1))
    return root


def only_spectra_errors(action) -> None:
    """Run ``action``; a SpectraError is a fine answer to bad input, any other exception is not."""
    try:
        action()
        event("accepted")
    except SpectraError as exc:
        str(exc).encode("utf-8")  # printable as the CLI's error line
        event(f"refused: {str(exc).split(':')[-2][-30:] if ':' in str(exc) else str(exc)[:30]}")


@contextmanager
def scratch(template: Path, name: str) -> Iterator[Path]:
    """A fresh copy of ``template/name`` for one example, removed afterwards."""
    with tempfile.TemporaryDirectory(dir=template.parent) as work:
        shutil.copytree(template / name, Path(work) / name)
        yield Path(work) / name


def paths(value, prefix=()) -> list[tuple]:
    """Every key path into a JSON value (including the containers themselves)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += paths(inner, (*prefix, key))
        found.append((*prefix, "new-field"))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            found += paths(inner, (*prefix, i))
    return found


def mutate(raw, path: tuple, value):
    """A copy of ``raw`` with the value at ``path`` replaced by ``value`` (or removed: DELETE)."""
    if not path:
        return value if value is not DELETE else {}
    raw = copy.deepcopy(raw)  # never the caller's value, nor a strategy's shared constant
    parent = raw
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE and isinstance(parent, dict):
        parent.pop(path[-1], None)
    elif value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return raw


@st.composite
def manifest_texts(draw, good: dict) -> bytes:
    """A good manifest with one value replaced, removed or garbled, or a few random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=40))
    path = draw(st.sampled_from(paths(good)))
    value = draw(json_values | st.just(DELETE))
    return json.dumps(mutate(good, path, value)).encode()


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_crafted_manifests(template, kind, data):
    with scratch(template, kind) as run:
        text = data.draw(manifest_texts(json.loads((run / MANIFEST).read_text())))
        (run / MANIFEST).write_bytes(text)
        only_spectra_errors(lambda: compute_run(run))


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_crafted_manifests_followed(template, kind, data):
    with scratch(template, kind) as run:
        text = data.draw(manifest_texts(json.loads((run / MANIFEST).read_text())))
        try:
            finished = json.loads(text).get("finished", False)
        except (ValueError, AttributeError):
            finished = True  # not a manifest at all: refused before any waiting
        assume(finished is not False)  # a run still training is followed until it finishes
        (run / MANIFEST).write_bytes(text)
        only_spectra_errors(lambda: compute_until_finished(run, poll=0))


tensors = st.builds(
    lambda shape, dtype: torch.ones(shape).to(dtype),
    st.lists(st.integers(0, 7), max_size=3),
    st.sampled_from(DTYPES),
)


@FUZZ
@given(
    kind=st.sampled_from(KINDS),
    frozen=st.booleans(),
    parts=st.dictionaries(
        st.sampled_from(["weight", "base", "left", "right", "scale", "values", "magnitude"]),
        tensors | st.just(None),
        min_size=1,
        max_size=3,
    ),
    garbage=st.none() | st.binary(max_size=64),
)
def test_crafted_step_files(template, kind, frozen, parts, garbage):
    with scratch(template, kind) as run:
        file = run / (FROZEN if frozen and kind != "dense" else step_file(1))
        if garbage is not None:
            file.write_bytes(garbage)
        else:
            damage_tensors(file, **parts)
        only_spectra_errors(lambda: compute_run(run))


columns = st.sampled_from(SCHEMA.names).flatmap(
    lambda name: st.tuples(
        st.just(name),
        st.sampled_from([pa.string(), pa.int64(), pa.float64(), pa.bool_(), pa.int8()]),
        st.sampled_from([None, 0, 1, 2.5, "x", True]),
    )
)


@st.composite
def metadata(draw):
    """(metadata bytes or None for unchanged, a column to replace or None)."""
    good = {"run": "a", "method": "ft", "run_dir": "a"}
    choice = draw(st.integers(0, 3))
    if choice == 0:
        raw = draw(st.binary(max_size=40))
    elif choice == 1:
        raw = json.dumps(draw(json_values)).encode()
    else:
        path = draw(st.sampled_from(paths(good)))
        raw = json.dumps(mutate(good, path, draw(json_values | st.just(DELETE))))
        raw = raw.encode()
    column = draw(st.none() | columns)
    return raw if choice != 3 else None, column


@contextmanager
def crafted_parquet(template: Path, crafted) -> Iterator[Path]:
    """A copy of the Parquet runs with run a's metadata or one of its columns replaced."""
    raw, column = crafted
    with scratch(template, "parquet") as folder:
        craft(folder / "a.parquet", raw, column)
        yield folder


def craft(path: Path, raw: bytes | None, column) -> None:
    table = pq.read_table(path)
    if raw is not None:
        table = table.replace_schema_metadata({b"spectra": raw})
    if column is not None:
        name, kind, value = column
        try:
            values = pa.array([value] * table.num_rows).cast(kind)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            values = pa.nulls(table.num_rows, kind)
        table = table.set_column(table.column_names.index(name), name, values)
    pq.write_table(table, path)


@FUZZ
@given(crafted=metadata())
def test_crafted_parquet_files_analyzed(template, crafted):
    with crafted_parquet(template, crafted) as folder:
        runs = [folder / "a.parquet", folder / "b.parquet"]
        only_spectra_errors(lambda: render(load_runs(runs), "json", False))


@settings(FUZZ, max_examples=15)
@given(crafted=metadata())
def test_crafted_parquet_files_plotted(template, crafted):
    with crafted_parquet(template, crafted) as folder:
        runs = [folder / "a.parquet", folder / "b.parquet"]
        only_spectra_errors(lambda: plot_runs(runs, "2,3,heatmap", folder / "figs"))


# --- SVD cache entries ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clean(template, tmp_path_factory) -> pd.DataFrame:
    """The rows of the dense run, computed with a cache of their own."""
    out = tmp_path_factory.mktemp("clean") / "dense.parquet"
    return read_run(compute_run(template / "dense", out, cache_dir=out.parent / "cache"))[0]


def other_svd(seed: int) -> SVD:
    """The SVD of another 6×4 matrix."""
    g = torch.Generator().manual_seed(seed)
    return svd(torch.randn(6, 4, dtype=torch.float64, generator=g))


@st.composite
def crafted_entries(draw, good: SVD, key: str) -> bytes | None:
    """An entry for W_0 ``key``: its own SVD or another's, changed, under metadata that is right,
    forged (a digest that matches what the entry holds) or wrong; or bytes; or None (missing)."""
    kind = draw(st.sampled_from(["bytes", "missing", "tensors"]))
    if kind == "bytes":
        return draw(st.binary(max_size=600))
    if kind == "missing":
        return None
    u, s, vh = draw(st.sampled_from([good, other_svd(draw(st.integers(0, 3)))]))
    change = draw(st.sampled_from(["none", "negate a pair", "swap columns", "noise", "scale s",
                                   "dtype", "shape", "drop one"]))  # fmt: skip
    if change == "negate a pair":  # still an SVD of the same matrix
        i = draw(st.integers(0, 3))
        u, vh = u.clone(), vh.clone()
        u[:, i], vh[i] = -u[:, i], -vh[i]
    elif change == "swap columns":
        u = u[:, [1, 0, 2, 3]]
    elif change == "noise":
        u = u + 10.0 ** draw(st.integers(-14, 0)) * torch.randn_like(u)
    elif change == "scale s":
        s = s * draw(st.sampled_from([-1.0, 0.5, 2.0, float("nan"), float("inf")]))
    elif change == "dtype":
        u, s, vh = (t.to(draw(st.sampled_from(DTYPES[:3]))) for t in (u, s, vh))
    elif change == "shape":
        u = u[:-1]
    tensors = {"u": u.contiguous(), "s": s.contiguous(), "vh": vh.contiguous()}
    if change == "drop one":
        tensors.pop(draw(st.sampled_from(sorted(tensors))))
    metadata = draw(st.sampled_from(["right", "forged", "none", "other key", "junk"]))
    digest = svd_cache_module.svd_digest(SVD(*(t.double() for t in (u, s, vh))))
    meta = {
        "right": {"format": "1", "w0": key, "digest": svd_cache_module.svd_digest(good)},
        "forged": {"format": "1", "w0": key, "digest": digest},
        "none": None,
        "other key": {"format": "1", "w0": "6x4-" + "0" * 32, "digest": digest},
        "junk": {"format": draw(st.text(max_size=3)), "w0": draw(st.text(max_size=5))},
    }[metadata]
    event(f"entry: {change}, metadata {metadata}")
    return save(tensors, metadata=meta)


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_crafted_cache_entries_are_computed_again(template, clean, data):
    with tempfile.TemporaryDirectory(dir=template.parent) as work:
        cache = Path(work) / "cache"
        w0 = open_run(template / "dense").weight(0, LAYER)
        key = weight_key(w0)
        entry = base_path(cache, key)
        entry.parent.mkdir(parents=True)
        crafted = data.draw(crafted_entries(svd(w0), key))
        if crafted is not None:
            entry.write_bytes(crafted)
        out = Path(work) / "dense.parquet"
        before = entry.read_bytes() if entry.exists() else None
        rows = read_run(compute_run(template / "dense", out, cache_dir=cache))[0]
        event("used" if entry.read_bytes() == before else "computed again")
        pd.testing.assert_frame_equal(rows, clean, check_exact=False, rtol=1e-9, atol=1e-12)
        assert not isinstance(svd_cache_module.read_entry(entry, key, (6, 4)), str)


# --- import: safetensors headers, shard indexes, adapter configs ------------------------------

EXAMPLE_SECONDS = 120  # far beyond any example; a hang ends the test run with its traceback
TRICKY_NAMES = st.sampled_from(
    ["../outside/secret.safetensors", "../../etc/passwd", "/dev/zero", "", ".", "..",
     "model-00001-of-00003.safetensors/../model-00002-of-00003.safetensors", "a\x00b",
     "outside", "model.safetensors.index.json", CATASTROPHIC]
)  # fmt: skip
NESTED: list = []
for _ in range(100):
    NESTED = [NESTED]
TRICKY_CONFIG = st.sampled_from(
    [CATASTROPHIC, "(", ".*", "all-linear", 10**9, 2**70, -1, 0, float("nan"), float("inf"),
     "pissa_niter_x", "pissa_niter_1000000000", {CATASTROPHIC: 4}, {"q_proj": 10**9},
     [CATASTROPHIC], NESTED]
)  # fmt: skip


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    return make_import_inputs(tmp_path_factory.mktemp("checkpoints"))


def imported(inputs: Path, source: str) -> None:
    """Import ``inputs/source`` onto ``inputs/base``: a run, or SpectraError and nothing
    written; never another exception, a hang or a read of ``outside/``."""
    secret = inputs / SECRET
    os.utime(secret, (0, secret.stat().st_mtime))  # any read of it moves its access time
    faulthandler.dump_traceback_later(EXAMPLE_SECONDS, exit=True)
    try:
        only_spectra_errors(lambda: import_run([inputs / source], inputs / "base",
                                               out=inputs / "runs", name="run"))  # fmt: skip
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert secret.stat().st_atime == 0, "a file outside the inputs was read"
    runs = inputs / "runs"
    assert not runs.exists() or all(not p.name.startswith(".") for p in runs.iterdir())


@contextmanager
def scratch_inputs(checkpoints: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir=checkpoints.parent) as work:
        shutil.copytree(checkpoints, Path(work) / "in", symlinks=True)
        yield Path(work) / "in"


def read_header(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + length]), data[8 + length :]


@st.composite
def safetensors_files(draw, good: dict, body: bytes) -> bytes:
    """A good safetensors file with one header value replaced or removed (offsets, dtypes,
    shapes, names), its length field or its data changed, or a few random bytes."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(st.binary(max_size=64))
    text = json.dumps(good)
    if choice <= 6:
        path = draw(st.sampled_from(paths(good)))
        value = draw(json_values | st.just(DELETE) | st.lists(st.integers(-1, 2**65), max_size=3))
        text = json.dumps(mutate(good, path, value))
    length = len(text.encode())
    if choice == 7:
        length = draw(st.sampled_from([0, 1, length - 1, length + 1, 2**32, 2**63, 2**64 - 1]))
    if choice == 8:
        body = body[: draw(st.integers(0, len(body)))]
    return struct.pack("<Q", length) + text.encode() + body


@FUZZ
@given(adapter=st.booleans(), data=st.data())
def test_crafted_safetensors_headers_imported(checkpoints, adapter, data):
    source = "lora" if adapter else "ft"
    weights = "adapter_model.safetensors" if adapter else "model.safetensors"
    with scratch_inputs(checkpoints) as inputs:
        good, body = read_header(inputs / source / weights)
        (inputs / source / weights).write_bytes(data.draw(safetensors_files(good, body)))
        imported(inputs, source)


@FUZZ
@given(data=st.data())
def test_crafted_shard_indexes_imported(checkpoints, data):
    with scratch_inputs(checkpoints) as inputs:
        good = json.loads((inputs / "sharded" / SHARDS).read_text())
        if data.draw(st.booleans()):  # a tensor moved to a tricky shard name
            tensor = data.draw(st.sampled_from(sorted(good["weight_map"])))
            good["weight_map"][tensor] = data.draw(TRICKY_NAMES)
            text = json.dumps(good)
        else:
            text = data.draw(manifest_texts(good)).decode("utf-8", "replace")
        if data.draw(st.booleans()):  # a shard replaced by a symlink out, a loop or a FIFO
            shard = sorted((inputs / "sharded").glob("*.safetensors"))[0]
            shard.unlink()
            how = data.draw(st.sampled_from(["out", "loop", "fifo"]))
            if how == "fifo":
                os.mkfifo(shard)
            else:
                shard.symlink_to(f"../{SECRET}" if how == "out" else shard.name)
        (inputs / "sharded" / SHARDS).write_text(text)
        imported(inputs, "sharded")


@FUZZ
@given(adapter=st.sampled_from(["lora", "adalora"]), data=st.data())
def test_crafted_adapter_configs_imported(checkpoints, adapter, data):
    with scratch_inputs(checkpoints) as inputs:
        config = inputs / adapter / ADAPTER_CONFIG
        good = json.loads(config.read_text())
        field = data.draw(st.sampled_from(sorted(good)))
        value = data.draw(TRICKY_CONFIG | json_values | st.just(DELETE))
        text = json.dumps(mutate(good, (field,), value))
        garbled = manifest_texts(good).map(lambda b: b.decode("utf-8", "replace"))
        config.write_text(data.draw(st.just(text) | garbled))
        imported(inputs, adapter)
