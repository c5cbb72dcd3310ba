"""Every bad input a user can give the CLI ends in one `error:` line, exit 2, nothing damaged.

One row per bad input: a setup that damages a copy of a few good runs (run directories of
each kind, spectra Parquet files, a model folder, a data file) and returns the arguments.
Each row asserts exactly one output line starting ``error:``, exit code 2, no traceback,
every file that existed before byte-identical and no temporary file left behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pwd
import shutil
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from adapter_maker import adapter_tensors, as_int8, make_adapter, rank_three
from helpers import fifo, loop, moved_out
from import_inputs import (
    ADAPTER_CONFIG,
    CATASTROPHIC,
    SECRET,
    SHARDS,
    edit_json,
    first_shard,
    make_import_inputs,
    rename_shard,
)
from runmaker import LAYER, damage_tensors, make_run, make_run_dir, parallel

from spectra.recipes import DEFAULT_MODEL
from spectra.run_files import FROZEN, MANIFEST, parquet_path, step_file

GOOD_RECORD = json.dumps({"query": "1+1?", "response": "2"})


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """Good inputs: run directories of each kind, Parquet runs, a model folder, a data file."""
    root = tmp_path_factory.mktemp("template")
    for kind in ("dense", "lowrank", "dora"):
        make_run_dir(root / "runs", kind, kind)
    make_run(root / "parquet", "a", "ft", parallel(0.1))
    make_run(root / "parquet", "b", "lora", parallel(0.1))
    shutil.copytree(DEFAULT_MODEL, root / "model")
    make_adapter(root / "model", root / "adapter")
    (root / "data.jsonl").write_text(GOOD_RECORD + "\n")
    make_import_inputs(root)
    return root


# --- damage ---------------------------------------------------------------------------------


def damage_manifest(run: Path, change: Callable[[dict], object]) -> None:
    raw = json.loads((run / MANIFEST).read_text())
    change(raw)
    (run / MANIFEST).write_text(json.dumps(raw))


def damage_metadata(path: Path, raw: bytes | None = None, **changes) -> None:
    """Rewrite a Parquet file's spectra metadata: raw bytes, or JSON fields changed."""
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"spectra"]) | changes
    value = raw if raw is not None else json.dumps(meta).encode()
    pq.write_table(table.replace_schema_metadata({b"spectra": value}), path)


def damage_column(path: Path, name: str, values: list, kind=None) -> None:
    table = pq.read_table(path)
    column = pa.array(values * table.num_rows, kind)
    pq.write_table(table.set_column(table.column_names.index(name), name, column), path)


def duplicate_rows(path: Path) -> None:
    """Every row of a run file twice, the copy with another ΔΣ (a mean would mix them)."""
    table = pq.read_table(path)
    column = pa.array([9.0] * table.num_rows, pa.float64())
    again = table.set_column(table.column_names.index("delta_sigma"), "delta_sigma", column)
    pq.write_table(pa.concat_tables([table, again]), path)


def hidden_copy(run_dir: Path) -> None:
    shutil.copytree(run_dir, run_dir.with_name(f".{run_dir.name}"))


def fail_renames(mp: pytest.MonkeyPatch, code: int) -> None:
    """Every rename into place fails with ``code`` (a read-only or full file system)."""

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    mp.setattr(os, "replace", fail)


def tiny_bert(path: Path) -> None:
    """A model folder whose head is BertModel: no causal language-model head."""
    from transformers import BertConfig

    BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=48, architectures=["BertModel"],
    ).save_pretrained(path)  # fmt: skip


def ones(*shape, dtype=torch.float32) -> torch.Tensor:
    return torch.ones(*shape, dtype=dtype)


# --- the table: setup(work dir, monkeypatch) -> CLI arguments ----------------------------------

Setup = Callable[[Path, pytest.MonkeyPatch], list]
DENSE, LOWRANK, DORA = Path("runs/dense"), Path("runs/lowrank"), Path("runs/dora")
A, B = Path("parquet/a.parquet"), Path("parquet/b.parquet")
TRACK = ("track", "--method", "ft", "--steps", "1", "--device", "cpu", "--out", "out")


def cmd(*arguments, prepare: Callable[[Path, pytest.MonkeyPatch], object] | None = None) -> Setup:
    def setup(root, mp):
        if prepare is not None:
            prepare(root, mp)
        return list(arguments)

    return setup


def compute(change: Callable[[Path], object], run: Path = DENSE, *more) -> Setup:
    return cmd("compute", run, *more, prepare=lambda root, mp: change(root / run))


def manifest(**fields) -> Setup:
    return compute(lambda run: damage_manifest(run, lambda raw: raw.update(fields)))


def without(field: str) -> Setup:
    return compute(lambda run: damage_manifest(run, lambda raw: raw.pop(field)))


def target(**fields) -> Setup:
    return compute(
        lambda run: damage_manifest(run, lambda raw: raw["targets"][LAYER].update(fields))
    )


def step(run: Path = DENSE, **parts) -> Setup:
    return compute(lambda r: damage_tensors(r / step_file(1), **parts), run)


def base(value: torch.Tensor) -> Setup:
    return compute(lambda r: damage_tensors(r / FROZEN, base=value), LOWRANK)


def write(file: str, data: bytes, run: Path = DENSE) -> Setup:
    return compute(lambda r: (r / file).write_bytes(data), run)


def parquet(change: Callable[[Path], object], command: str = "analyze") -> Setup:
    more = ["--out", "figs"] if command == "plot" else []
    return cmd(command, A, B, *more, prepare=lambda root, mp: change(root / A))


def track(*arguments, prepare=None) -> Setup:
    return cmd(*TRACK, *arguments, prepare=prepare)


def model(change: Callable[[Path], object]) -> Setup:
    return track("--model", "model", prepare=lambda root, mp: change(root / "model"))


def config(**fields) -> Setup:
    def change(folder):
        raw = json.loads((folder / "config.json").read_text()) | fields
        (folder / "config.json").write_text(json.dumps(raw))

    return model(change)


def failed(raw: dict) -> None:
    raw["extra"].update(status="failed", error="RuntimeError: boom")


IMPORT = ("import", "model", "--base", "model", "--name", "m", "--out", "runs")


def foreign_parquet(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"x": [1]}), path)


def another_runs_rows(run_dir: Path) -> None:
    """A spectra run directory, and beside it the Parquet file of another run."""
    shutil.copytree(run_dir.parent / "dense", run_dir)
    shutil.copy(run_dir.parent.parent / A, parquet_path(run_dir))


def folder(path: Path) -> None:
    path.mkdir(parents=True)


def with_notes(run_dir: Path) -> None:
    """A spectra run directory holding a file spectra does not write."""
    shutil.copytree(run_dir.parent.parent / DENSE, run_dir)
    (run_dir / "notes.txt").write_text("mine")


def overwrite(command: tuple, place: str, make: Callable[[Path], object]) -> Setup:
    """``command --overwrite`` where ``make`` put something at ``place`` first."""
    return cmd(*command, "--overwrite", prepare=lambda root, mp: make(root / place))


CASES = [
    # manifests
    pytest.param(cmd("compute", "runs/nope"), "not found", id="run dir missing"),
    pytest.param(cmd("compute", "runs"), "no manifest.json", id="no manifest"),
    pytest.param(write(MANIFEST, b"{oops"), "not a valid spectra manifest", id="manifest not JSON"),
    pytest.param(write(MANIFEST, b'{"run": "\xff"}'), "UTF-8", id="manifest not UTF-8"),
    pytest.param(write(MANIFEST, b"[]"), "not a JSON object", id="manifest a list"),
    pytest.param(
        compute(lambda r: ((r / MANIFEST).unlink(), (r / MANIFEST).mkdir())),
        "no manifest.json",
        id="manifest a directory",
    ),
    pytest.param(manifest(targets=[]), "targets: expected an object", id="targets a list"),
    pytest.param(manifest(targets={LAYER: 5}), "expected an object", id="target a number"),
    pytest.param(manifest(targets={}), "no target layers", id="targets empty"),
    pytest.param(without("targets"), "missing field 'targets'", id="targets missing"),
    pytest.param(without("run"), "missing field 'run'", id="run missing"),
    pytest.param(manifest(run=5), "run: expected a string", id="run a number"),
    pytest.param(manifest(run=""), "run: expected a non-empty", id="run empty"),
    pytest.param(manifest(run="a\nb"), "run: expected a non-empty printable", id="run two lines"),
    pytest.param(manifest(method=[]), "method: expected a string", id="method a list"),
    pytest.param(manifest(finished="yes"), "finished: expected true or false", id="finished a str"),
    pytest.param(manifest(format="1"), "format: expected an integer", id="format a string"),
    pytest.param(manifest(format=99), "format 99", id="format from the future"),
    pytest.param(manifest(bogus=1), "unknown field 'bogus'", id="unknown field"),
    pytest.param(manifest(rank="2"), "rank: expected an integer", id="rank a string"),
    pytest.param(manifest(gamma="x"), "gamma: expected a number", id="gamma a string"),
    pytest.param(manifest(every=0), "every: must be positive", id="every zero"),
    pytest.param(manifest(model=5), "model: expected a string", id="model a number"),
    pytest.param(manifest(extra=[]), "extra: expected an object", id="extra a list"),
    pytest.param(manifest(extra={"error": 5}), "extra.error", id="error a number"),
    pytest.param(manifest(run_id=5), "run_id: expected a string", id="run id a number"),
    pytest.param(manifest(steps=["0", "1"]), "steps[0]: expected an integer", id="steps strings"),
    pytest.param(manifest(steps=[0, 1.5]), "steps[1]: expected an integer", id="steps a float"),
    pytest.param(manifest(steps=[-1, 0, 1]), "never negative", id="steps negative"),
    pytest.param(manifest(steps=[True]), "steps[0]: expected an integer", id="steps a bool"),
    pytest.param(manifest(steps="0,1"), "steps: expected a list of integers", id="steps a str"),
    pytest.param(manifest(resumed=[-3]), "never negative", id="resumed negative"),
    pytest.param(target(kind="sparse"), "unknown layer kind 'sparse'", id="kind unknown"),
    pytest.param(target(kind=3), "kind: expected a string", id="kind a number"),
    pytest.param(
        compute(lambda r: damage_manifest(r, lambda raw: raw["targets"][LAYER].pop("kind"))),
        "missing field 'kind'",
        id="kind missing",
    ),
    pytest.param(target(shape=[6]), "expected a list of 2 integers", id="shape one int"),
    pytest.param(target(shape=["6", "4"]), "shape[0]: expected an integer", id="shape strings"),
    pytest.param(target(shape=[6.0, 4.0]), "shape[0]: expected an integer", id="shape floats"),
    pytest.param(target(shape=[0, 4]), "must be positive", id="shape zero"),
    pytest.param(target(rank=0), "must be positive", id="target rank zero"),
    pytest.param(
        target(shape=[7, 4]), "differs from the manifest's (7, 4)", id="shape not the tensors'"
    ),
    pytest.param(target(shape=[2, 4], rows=[[4, 2]]), "out of order", id="rows reversed"),
    pytest.param(target(shape=[4, 4], rows=[[0, 2], [1, 3]]), "overlaps", id="rows overlap"),
    pytest.param(target(rows=[[0, 3]]), "select 3 rows, the shape says 6", id="rows not the shape"),
    pytest.param(target(shape=[4, 4], rows=[[4, 8]]), "go beyond the 6 rows", id="rows beyond"),
    pytest.param(target(shape=[4, 4], rows=[[0, 2, 4]]), "expected a list of 2", id="rows triple"),
    pytest.param(target(rows=[]), "select 0 rows", id="rows empty"),
    pytest.param(target(source=""), "source: expected a non-empty", id="source empty"),
    pytest.param(
        compute(
            lambda r: damage_manifest(
                r, lambda raw: raw.update(targets={"\ud800": raw["targets"][LAYER]})
            )
        ),
        "not valid UTF-8",
        id="layer name not UTF-8",
    ),
    # step files
    pytest.param(step(weight=ones(24)), "expected a 2-D matrix", id="weight 1-D"),
    pytest.param(step(weight=ones(6, 4, 1)), "expected a 2-D matrix", id="weight 3-D"),
    pytest.param(step(weight=ones(0, 4)), "weight is empty", id="weight empty"),
    pytest.param(
        step(weight=ones(6, 4, dtype=torch.int32)), "expected a floating", id="weight ints"
    ),
    pytest.param(
        step(weight=ones(6, 4, dtype=torch.bool)), "expected a floating", id="weight bool"
    ),
    pytest.param(
        step(weight=ones(6, 4, dtype=torch.complex64)), "expected a floating", id="weight complex"
    ),
    pytest.param(step(weight=None), "missing tensors ['weight']", id="weight missing"),
    pytest.param(
        step(LOWRANK, right=ones(3, 4)), "right has shape (3, 4)", id="left, right disagree"
    ),
    pytest.param(step(LOWRANK, left=ones(5, 2)), "left has shape (5, 2)", id="left not the base's"),
    pytest.param(
        step(LOWRANK, left=ones(6, 0), right=ones(0, 4), values=ones(0)), "empty", id="rank zero"
    ),
    pytest.param(step(LOWRANK, scale=ones(2)), "scale has 2 elements", id="scale two elements"),
    pytest.param(step(LOWRANK, values=ones(3)), "values has 3 elements", id="values too long"),
    pytest.param(
        step(LOWRANK, left=ones(6, 2, dtype=torch.int64)), "expected a floating", id="left ints"
    ),
    pytest.param(step(DORA, magnitude=ones(5)), "magnitude has 5 elements", id="magnitude short"),
    pytest.param(base(ones(7, 4)), "left has shape (6, 2), expected (7, 2)", id="base taller"),
    pytest.param(base(ones(24)), "base has shape (24,)", id="base 1-D"),
    pytest.param(compute(lambda r: (r / FROZEN).unlink(), LOWRANK), "frozen", id="frozen missing"),
    pytest.param(write(step_file(1), b"\x00garbage" * 10), "corrupt", id="step file garbage"),
    pytest.param(
        compute(lambda r: (r / step_file(1)).write_bytes((r / step_file(1)).read_bytes()[:40])),
        "corrupt or truncated",
        id="step file truncated",
    ),
    pytest.param(compute(lambda r: (r / step_file(1)).unlink()), "missing", id="step file missing"),
    pytest.param(
        compute(lambda r: moved_out(r / step_file(1))), "outside", id="step file linked outside"
    ),
    pytest.param(compute(lambda r: fifo(r / step_file(1))), "a FIFO", id="step file FIFO"),
    pytest.param(compute(lambda r: loop(r / FROZEN), LOWRANK), "loop", id="frozen file loop"),
    # outputs, cache and options
    pytest.param(cmd("compute", DENSE, "--out", "nope/d.parquet"), "nope", id="--out no parent"),
    pytest.param(cmd("compute", DENSE, "--out", "runs"), "not a spectra run", id="--out a dir"),
    pytest.param(
        cmd("compute", DENSE, "--out", "data.jsonl/d.parquet"),
        "Not a directory",
        id="--out in file",
    ),
    pytest.param(
        cmd("compute", DENSE, prepare=lambda root, mp: fail_renames(mp, errno.EROFS)),
        "Read-only file system",
        id="read-only file system",
    ),
    pytest.param(
        cmd("compute", DENSE, prepare=lambda root, mp: fail_renames(mp, errno.ENOSPC)),
        "No space left",
        id="disk full",
    ),
    pytest.param(
        compute(lambda r: pq.write_table(pa.table({"x": [1]}), r.parent / "dense.parquet")),
        "not a spectra run file",
        id="foreign Parquet at the output",
    ),
    pytest.param(
        cmd("compute", DENSE, "--scheduler", "not an address"), "scheduler", id="scheduler bad"
    ),
    pytest.param(
        cmd("compute", DENSE, "--scheduler", "tcp://localhost:port"), "scheduler", id="bad port"
    ),
    pytest.param(cmd("compute", DENSE, "--scheduler", "tcp://"), "scheduler", id="no host"),
    pytest.param(cmd("compute", DENSE, "--workers", "0"), "--workers 0", id="workers 0"),
    pytest.param(cmd("compute", DENSE, "--workers", "-2"), "--workers -2", id="workers < 0"),
    pytest.param(cmd("compute", DENSE, "--workers", "100000"), "use 1 to", id="workers huge"),
    pytest.param(cmd("compute", DENSE, "--workers", "many"), "'--workers'", id="workers a word"),
    pytest.param(cmd("compute", DENSE, "--device", "tpu"), "tpu", id="device unknown"),
    pytest.param(cmd("compute", DENSE, "--bogus"), "No such option: --bogus", id="unknown option"),
    pytest.param(cmd("compute"), "Missing argument", id="missing argument"),
    pytest.param(cmd("comptue"), "No such command 'comptue'", id="unknown command"),
    pytest.param(
        compute(lambda r: damage_manifest(r, failed), DENSE, "--follow"),
        "failed (RuntimeError: boom)",
        id="follow a failed run",
    ),
    pytest.param(cmd("compute", "runs/nope", "--follow"), "not found", id="follow no run"),
    # Parquet files
    pytest.param(parquet(lambda p: damage_metadata(p, raw=b"[]")), "not a JSON", id="meta a list"),
    pytest.param(
        parquet(lambda p: damage_metadata(p, raw=b"\xff\xfe")), "not UTF-8", id="meta bytes"
    ),
    pytest.param(
        parquet(lambda p: damage_metadata(p, raw=b"{oops")), "corrupt", id="meta not JSON"
    ),
    pytest.param(
        parquet(lambda p: damage_metadata(p, raw=b'{"method": "ft"}')), "'run'", id="meta no run"
    ),
    pytest.param(parquet(lambda p: damage_metadata(p, run=5)), "'run' must be", id="meta run int"),
    pytest.param(
        parquet(lambda p: damage_metadata(p, raw=b'{"run": "\\ud800", "method": "ft"}')),
        "not valid UTF-8",
        id="meta run not UTF-8",
    ),
    pytest.param(parquet(lambda p: damage_metadata(p, method=[])), "'method'", id="meta method"),
    pytest.param(parquet(lambda p: damage_metadata(p, run_dir=5)), "'run_dir'", id="meta run_dir"),
    pytest.param(
        parquet(lambda p: damage_metadata(p, run_dir="a\x00b"), "plot"), "'run_dir'", id="NUL"
    ),
    pytest.param(parquet(lambda p: damage_column(p, "step", ["x"])), "'step'", id="step strings"),
    pytest.param(
        parquet(lambda p: damage_column(p, "delta_d", ["x"])), "'delta_d'", id="delta_d strings"
    ),
    pytest.param(
        parquet(lambda p: damage_column(p, "step", [None], pa.int64())), "empty", id="step null"
    ),
    pytest.param(
        parquet(lambda p: damage_column(p, "delta_d", [float("nan")])), "NaN", id="delta_d NaN"
    ),
    pytest.param(
        parquet(lambda p: damage_column(p, "run", ["zzz"])), "rows of run 'zzz'", id="other run"
    ),
    pytest.param(
        cmd("analyze", "runs"), "holds no run files", id="analyze a folder of no run files"
    ),
    pytest.param(cmd("plot", A, "--out", "data.jsonl"), "figure folder", id="plot out a file"),
    pytest.param(
        cmd(
            "plot",
            A,
            "--out",
            "figs",
            prepare=lambda root, mp: (root / "figs" / "figure2.html").mkdir(parents=True),
        ),
        "Is a directory",
        id="plot output a directory",
    ),
    pytest.param(
        cmd("plot", A, "--out", "figs", prepare=lambda root, mp: fail_renames(mp, errno.EROFS)),
        "Read-only file system",
        id="plot read-only",
    ),
    pytest.param(
        cmd(
            "plot",
            A,
            "--figure",
            "3",
            "--out",
            "figs",
            prepare=lambda root, mp: (root / "parquet" / "a" / "train_log.parquet").write_bytes(
                b"garbage"
            ),
        ),
        "not a readable train log",
        id="plot corrupt train log",
    ),
    # track
    pytest.param(
        track(
            "--data",
            "bad.jsonl",
            prepare=lambda root, mp: (root / "bad.jsonl").write_bytes(
                GOOD_RECORD.encode() + b"\n\xff\xfe\n"
            ),
        ),
        "bad.jsonl:2: not UTF-8",
        id="data not UTF-8",
    ),
    pytest.param(track("--data", "runs"), "no such data file", id="data a directory"),
    pytest.param(
        track("--data", "fifo.jsonl", prepare=lambda root, mp: fifo(root / "fifo.jsonl")),
        "a FIFO",
        id="data a FIFO",
    ),
    pytest.param(
        track("--data", "loop.jsonl", prepare=lambda root, mp: loop(root / "loop.jsonl")),
        "a symlink loop",
        id="data a symlink loop",
    ),
    pytest.param(
        model(lambda m: [(m / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")]),
        "no usable tokenizer",
        id="model without a tokenizer",
    ),
    pytest.param(
        model(lambda m: (m / "model.safetensors").unlink()), "no weights", id="no weights"
    ),
    pytest.param(
        model(lambda m: (m / "model.safetensors").write_bytes(b"\x08" + b"\0" * 64)),
        "corrupt or truncated weights",
        id="weights garbage",
    ),
    pytest.param(
        model(lambda m: (m / "config.json").write_text("{oops")),
        "not a transformers model",
        id="config not JSON",
    ),
    pytest.param(config(num_attention_heads=0), "not a transformers model", id="zero heads"),
    pytest.param(config(hidden_size="big"), "hidden_size", id="config wrong type"),
    pytest.param(config(intermediate_size=-1), "does not make a model", id="negative size"),
    pytest.param(config(hidden_act="nope"), "does not make a model", id="unknown activation"),
    pytest.param(config(model_type=5), "not a transformers model", id="model type a number"),
    pytest.param(
        track("--model", "bert", prepare=lambda root, mp: tiny_bert(root / "bert")),
        "a BertModel has no causal language-model head",
        id="non-causal head",
    ),
    pytest.param(track("--out", "data.jsonl"), "is a file", id="track out a file"),
    # overwrite removes only the run it replaces (issue 17)
    pytest.param(
        overwrite(IMPORT, "runs/m.parquet", foreign_parquet),
        "m.parquet is not a spectra run file; not replacing it",
        id="import --overwrite a foreign Parquet",
    ),
    pytest.param(
        overwrite(IMPORT, "runs/m.parquet", folder),
        "m.parquet is a folder, not a spectra run file",
        id="import --overwrite a Parquet folder",
    ),
    pytest.param(
        overwrite(IMPORT, "runs/m", another_runs_rows),
        "holds run 'a' (id None), not the run in runs/m",
        id="import --overwrite another run's rows",
    ),
    pytest.param(
        overwrite(IMPORT, "runs/m", with_notes),
        "holds 'notes.txt', which spectra did not write",
        id="import --overwrite a run dir with notes",
    ),
    pytest.param(
        overwrite(TRACK, "out/ft.parquet", foreign_parquet),
        "ft.parquet is not a spectra run file",
        id="track --overwrite a foreign Parquet",
    ),
    pytest.param(
        overwrite(TRACK, "out/ft.parquet", folder), "is a folder", id="track --overwrite folder"
    ),
    pytest.param(
        overwrite(TRACK, "out/ft", with_notes), "which spectra did not write", id="track notes"
    ),  # run files hold one row per (step, layer) and are never hidden (issue 17)
    pytest.param(
        parquet(duplicate_rows), "repeated (step, layer) pairs", id="duplicate (step, layer) rows"
    ),
    pytest.param(
        parquet(duplicate_rows, "plot"), "repeated (step, layer)", id="plot duplicate rows"
    ),
    pytest.param(
        cmd("compute", "runs/.dense", prepare=lambda root, mp: hidden_copy(root / DENSE)),
        "would have a hidden Parquet file .dense.parquet",
        id="compute a hidden run dir",
    ),
    pytest.param(
        cmd("analyze", "no\x1b[2Jsuch\nfile\u202e.parquet"),
        "no\\x1b[2Jsuch file\\u202e",
        id="error line quoting control characters",
    ),
    # import refuses up front what compute would refuse, in one line (issue 17)
    pytest.param(
        cmd("import", "model", "--base", "model", "--name", "a\nb"),
        "run name: expected a non-empty printable",
        id="import a run name with a line break",
    ),
    pytest.param(
        cmd(
            "import",
            "adapter",
            "--base",
            "model",
            "--out",
            "runs",
            prepare=lambda root, mp: adapter_tensors(root / "adapter", as_int8),
        ),
        "is not floating point",
        id="import int8 factors",
    ),
    pytest.param(
        cmd(
            "import",
            "adapter",
            "--base",
            "model",
            "--out",
            "runs",
            prepare=lambda root, mp: adapter_tensors(root / "adapter", rank_three),
        ),
        "has rank 3",
        id="import refused after its first step",
    ),
]


# --- paths contained, budgets before allocation, importer configs (issue 17, part B) ---------

IMPORT_TO = ("--out", "imported", "--name", "run")
DEEP = "[" * 10_000 + "]" * 10_000
BIG = 2**70  # beyond int64
EPOCHS = ("track", "--method", "ft", "--device", "cpu", "--out", "out")


def imp(source, *more, base="base", prepare=None) -> Setup:
    return cmd("import", source, "--base", base, *IMPORT_TO, *more, prepare=prepare)


def at(path: str, change: Callable[[Path], object]) -> Callable:
    """A prepare step applying ``change`` to ``root/path``."""
    return lambda root, mp: change(root / path)


def shard_named(name: Callable[[Path], str]) -> Callable[[Path], None]:
    """The sharded folder with its first shard named ``name(root)`` in the index."""
    return lambda folder: rename_shard(folder, first_shard(folder), name(folder.parent))


def adapter(**fields) -> Setup:
    return imp("lora", prepare=at(f"lora/{ADAPTER_CONFIG}", lambda p: edit_json(p, **fields)))


def adapter_text(old: str, new: str) -> Setup:
    def change(path: Path) -> None:
        path.write_text(path.read_text().replace(old, new))

    return imp("lora", prepare=at(f"lora/{ADAPTER_CONFIG}", change))


def header(length: int, body: bytes = b"{}") -> Callable[[Path], None]:
    return lambda path: path.write_bytes(struct.pack("<Q", length) + body)


def homeless(root: Path, mp: pytest.MonkeyPatch) -> None:
    """No $HOME, no $SPECTRA_CACHE and no password-database entry (``~`` cannot be found)."""

    def unknown(uid):
        raise KeyError(uid)

    mp.delenv("HOME", raising=False)
    mp.delenv("SPECTRA_CACHE", raising=False)
    mp.setattr(pwd, "getpwuid", unknown)


def full_stdout(root: Path, mp: pytest.MonkeyPatch) -> None:
    mp.setattr(sys, "stdout", open("/dev/full", "w"))  # noqa: SIM115 - closed at exit


def pandas_metadata(path: Path, raw: bytes) -> None:
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata(table.schema.metadata | {b"pandas": raw}), path)


TRAINER = Path("out/checkpoint-2")
HARDENING = [
    # paths inside their folder
    pytest.param(
        imp("sharded", prepare=at("sharded", shard_named(lambda root: "../" + str(SECRET)))),
        "is not a name inside the folder",
        id="index shard ../outside",
    ),
    pytest.param(
        imp("sharded", prepare=at("sharded", shard_named(lambda root: str(root / SECRET)))),
        "is not a name inside the folder",
        id="index shard absolute",
    ),
    pytest.param(
        imp("sharded", prepare=at("sharded", lambda f: moved_out(f / first_shard(f)))),
        "links to",
        id="index shard symlinked out",
    ),
    pytest.param(
        imp("sharded", prepare=at("sharded", shard_named(lambda root: "a\x00b"))),
        "is missing",
        id="index shard NUL",
    ),
    pytest.param(
        imp("ft", prepare=at("base/model.safetensors", moved_out)),
        "links to",
        id="base weights out",
    ),
    pytest.param(
        imp("lora", prepare=at("lora/adapter_model.safetensors", moved_out)),
        "links to",
        id="adapter weights out",
    ),
    pytest.param(
        imp("lora", prepare=at(f"lora/{ADAPTER_CONFIG}", moved_out)),
        "links to",
        id="adapter config out",
    ),
    pytest.param(
        imp("out", prepare=at("out/checkpoint-4", lambda p: p.symlink_to("../ft"))),
        "links to",
        id="checkpoint-N out",
    ),
    pytest.param(
        imp("ft", prepare=at("ft/config.json", lambda p: (p.unlink(), p.symlink_to("gone")))),
        "a symlink to nothing",
        id="dangling config",
    ),
    # symlink loops, FIFOs and devices: refused, never opened
    pytest.param(
        cmd("import", "loop", "--base", "base", "--out", "imported", prepare=at("loop", loop)),
        "a symlink loop",
        id="source a symlink loop",
    ),
    pytest.param(
        imp("ft", base="loop", prepare=at("loop", loop)), "a symlink loop", id="base loop"
    ),
    pytest.param(
        imp("x.safetensors", prepare=at("x.safetensors", fifo)), "a FIFO", id="FIFO source"
    ),
    pytest.param(imp("ft", base="x.pt", prepare=at("x.pt", fifo)), "a FIFO", id="FIFO base"),
    pytest.param(
        imp("z.safetensors", prepare=at("z.safetensors", lambda p: p.symlink_to("/dev/zero"))),
        "a device",
        id="device source",
    ),
    pytest.param(imp("ft", prepare=at("ft/model.safetensors", fifo)), "a FIFO", id="FIFO weights"),
    pytest.param(imp("ft", prepare=at("ft/config.json", fifo)), "a FIFO", id="FIFO config"),
    pytest.param(
        imp("lora", prepare=at(f"lora/{ADAPTER_CONFIG}", fifo)), "a FIFO", id="FIFO adapter config"
    ),
    pytest.param(
        imp("lora", prepare=at("lora/adapter_model.safetensors", fifo)),
        "a FIFO",
        id="FIFO adapter weights",
    ),
    pytest.param(imp("sharded", prepare=at(f"sharded/{SHARDS}", fifo)), "a FIFO", id="FIFO index"),
    pytest.param(
        imp("sharded", prepare=at("sharded", lambda f: fifo(f / first_shard(f)))),
        "a FIFO",
        id="FIFO shard",
    ),
    pytest.param(
        imp("sharded", prepare=at(f"sharded/{SHARDS}", loop)), "a symlink loop", id="index loop"
    ),
    pytest.param(
        imp("out", prepare=at(str(TRAINER / "trainer_state.json"), fifo)),
        "a FIFO",
        id="FIFO trainer_state",
    ),
    pytest.param(
        imp("out", prepare=at("out/checkpoint-4", loop)), "a symlink loop", id="checkpoint-N loop"
    ),
    pytest.param(model(lambda m: fifo(m / "config.json")), "a FIFO", id="track FIFO config"),
    # budgets before allocation
    pytest.param(
        imp(
            "gpt2",
            base="gpt2",
            prepare=at("gpt2/config.json", lambda p: edit_json(p, n_embd=10**12)),
        ),
        "n_embd = 1000000000000 exceeds the module's",
        id="gpt2 n_embd 1e12",
    ),
    pytest.param(config(hidden_size=10**12), "hidden_size = 1000000000000", id="hidden 1e12"),
    pytest.param(config(vocab_size=10**12), "vocab_size = 1000000000000", id="vocab 1e12"),
    pytest.param(config(num_hidden_layers=10**6), "num_hidden_layers = 1000000", id="layers 1e6"),
    pytest.param(adapter(r=10**9), "rank 1000000000 is larger than any matrix", id="r 1e9"),
    pytest.param(adapter(rank_pattern={"q_proj": 10**9}), "rank 1000000000", id="rank_pattern 1e9"),
    pytest.param(
        cmd("plot", A, "--layers", "1000000-1000000000", "--out", "figs"),
        "select no layer",
        id="--layers far beyond",
    ),
    pytest.param(
        imp("h.safetensors", prepare=at("h.safetensors", header(2**63))),
        "spectra reads at most 8 MiB",
        id="header length 2^63",
    ),
    pytest.param(
        imp("h.safetensors", prepare=at("h.safetensors", header(9 << 20, b" " * (9 << 20)))),
        "spectra reads at most 8 MiB",
        id="header 9 MiB",
    ),
    pytest.param(
        model(lambda m: header(2**40)(m / "extra.safetensors")),
        "spectra reads at most 8 MiB",
        id="track header 1 TiB",
    ),
    pytest.param(write(MANIFEST, DEEP.encode()), "nested more than 64 deep", id="deep manifest"),
    pytest.param(
        parquet(lambda p: damage_metadata(p, raw=DEEP.encode())), "nested more", id="deep metadata"
    ),
    pytest.param(
        imp("ft", prepare=at("ft/config.json", lambda p: p.write_text(DEEP))),
        "nested more",
        id="deep config",
    ),
    pytest.param(
        imp("lora", prepare=at(f"lora/{ADAPTER_CONFIG}", lambda p: p.write_text(DEEP))),
        "nested more",
        id="deep adapter config",
    ),
    pytest.param(
        adapter_text('"r": 4', '"r": 4, "zz": ' + "[" * 900 + "]" * 900),
        "nested more",
        id="deep adapter field",
    ),
    pytest.param(
        imp("sharded", prepare=at(f"sharded/{SHARDS}", lambda p: p.write_text(DEEP))),
        "nested more",
        id="deep index",
    ),
    pytest.param(
        imp("out", prepare=at(str(TRAINER / "trainer_state.json"), lambda p: p.write_text(DEEP))),
        "nested more",
        id="deep trainer_state",
    ),
    pytest.param(
        track("--data", "deep.jsonl", prepare=at("deep.jsonl", lambda p: p.write_text(DEEP))),
        "nested more",
        id="deep data line",
    ),
    pytest.param(model(lambda m: (m / "config.json").write_text(DEEP)), "nested", id="deep model"),
    pytest.param(manifest(steps=[0, 1, BIG]), "steps[2]: 1180591620717411303424", id="step 2^70"),
    pytest.param(manifest(resumed=[BIG]), "is out of range", id="resumed 2^70"),
    pytest.param(manifest(rank=BIG), "rank: 1180591620717411303424", id="rank 2^70"),
    pytest.param(manifest(every=BIG), "every: 1180591620717411303424", id="every 2^70"),
    pytest.param(
        compute(
            lambda r: damage_manifest(
                r, lambda raw: raw.update(finished=False, writer={"host": "h", "pid": 2**40})
            ),
            DENSE,
            "--follow",
        ),
        "writer.pid: 1099511627776 is out of range",
        id="pid 2^40",
    ),
    pytest.param(imp("ft", "--steps", str(BIG)), "fit in 64 bits", id="import --steps 2^70"),
    pytest.param(
        imp("out", prepare=at(str(TRAINER), lambda p: p.rename(p.with_name(f"checkpoint-{BIG}")))),
        "fit in 64 bits",
        id="checkpoint-2^70",
    ),
    pytest.param(
        imp(
            "out",
            prepare=at(
                str(TRAINER / "trainer_state.json"),
                lambda p: p.write_text(json.dumps({"log_history": [{"step": BIG}]})),
            ),
        ),
        "beyond a 64-bit integer",
        id="trainer_state step 2^70",
    ),
    pytest.param(track("--steps", str(BIG)), "--steps: 1180591620717411303424", id="--steps 2^70"),
    pytest.param(track("--every", str(BIG)), "--every: 1180591620717411303424", id="--every 2^70"),
    pytest.param(cmd(*EPOCHS, "--epochs", "nan"), "positive finite number", id="--epochs nan"),
    pytest.param(cmd(*EPOCHS, "--epochs", "inf"), "positive finite number", id="--epochs inf"),
    pytest.param(cmd(*EPOCHS, "--epochs", "1e300"), "fit 64 bits", id="--epochs 1e300"),
    pytest.param(  # fits alone, not at the embedded data's 500 batches per epoch
        cmd(*EPOCHS, "--epochs", "1e17"), "1e+17 makes more optimizer steps", id="--epochs 1e17"
    ),
    # regular expressions from configs: bounded in time
    pytest.param(adapter(target_modules=CATASTROPHIC), "longer than 1 s", id="regex targets"),
    pytest.param(adapter(exclude_modules=CATASTROPHIC), "longer than 1 s", id="regex exclude"),
    pytest.param(adapter(rank_pattern={CATASTROPHIC: 4}), "longer than 1 s", id="regex ranks"),
    pytest.param(adapter(alpha_pattern={CATASTROPHIC: 8}), "longer than 1 s", id="regex alphas"),
    pytest.param(
        adapter(layers_to_transform=[0], layers_pattern=CATASTROPHIC),
        "longer than 1 s",
        id="regex layers",
    ),
    pytest.param(adapter(modules_to_save=[CATASTROPHIC]), "longer than 1 s", id="regex to save"),
    pytest.param(adapter(target_modules="("), "not a usable regular expression", id="regex bad"),
    # adapter configs
    pytest.param(adapter(target_modules=None), "target_modules = None", id="targets null"),
    pytest.param(adapter(target_modules="all-linear"), "'all-linear'", id="targets all-linear"),
    pytest.param(adapter(target_modules=5), "target_modules = 5", id="targets a number"),
    pytest.param(adapter(target_modules=[]), "target_modules = []", id="targets empty"),
    pytest.param(adapter(r=0), "r = 0; expected a positive integer", id="r 0"),
    pytest.param(adapter(r=-1), "r = -1", id="r negative"),
    pytest.param(adapter(r=4.5), "r = 4.5", id="r a float"),
    pytest.param(adapter(r="4"), "r = '4'", id="r a string"),
    pytest.param(adapter(r=8), "has rank 4, but", id="r not the tensors'"),
    pytest.param(adapter(lora_alpha="x"), "lora_alpha = 'x'", id="alpha a string"),
    pytest.param(adapter_text('"lora_alpha": 8', '"lora_alpha": NaN'), "nan", id="alpha NaN"),
    pytest.param(
        adapter(alpha_pattern="q_proj"), "alpha_pattern = 'q_proj'", id="alpha_pattern str"
    ),
    pytest.param(adapter(alpha_pattern={"q_proj": "x"}), "alpha_pattern", id="alpha_pattern value"),
    pytest.param(adapter(rank_pattern=[1]), "rank_pattern = [1]", id="rank_pattern a list"),
    pytest.param(adapter(rank_pattern={"q_proj": 0}), "rank_pattern", id="rank_pattern 0"),
    pytest.param(
        adapter(init_lora_weights="pissa_niter_abc"), "pissa_niter_abc", id="pissa_niter garbage"
    ),
    pytest.param(adapter(init_lora_weights="pissa_niter_0"), "pissa_niter_0", id="pissa_niter 0"),
    pytest.param(
        adapter(init_lora_weights="pissa_niter_1000000000"), "K in 1..1000", id="pissa_niter 1e9"
    ),
    pytest.param(adapter(use_dora="yes"), "use_dora = 'yes'", id="use_dora a string"),
    pytest.param(adapter(layers_to_transform="0"), "layers_to_transform", id="layers a string"),
    pytest.param(adapter(lora_dropout="x"), "lora_dropout = 'x'", id="dropout a string"),
    pytest.param(adapter(lora_dropout=2), "expected a probability", id="dropout 2"),
    # the environment
    pytest.param(cmd("compute", DENSE, prepare=homeless), "$HOME is not set", id="HOME unset"),
    pytest.param(
        cmd("analyze", A, B, prepare=full_stdout),
        "cannot write the output: No space left on device",
        id="stdout /dev/full",
        marks=pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full"),
    ),
]


def tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def never_read(root: Path) -> list[Path]:
    """The files outside every input, their access times set back (any read moves them)."""
    outside = [p for p in root.rglob("*") if p.is_file() and p.parent.name.startswith("outside")]
    for path in outside:
        os.utime(path, (0, path.stat().st_mtime))
    return outside


@pytest.mark.slow
@pytest.mark.parametrize(("setup", "fragment"), CASES + HARDENING)
def test_bad_input_is_one_error_line_and_damages_nothing(
    setup, fragment, template, tmp_path, monkeypatch, cli
):
    work = tmp_path / "work"
    shutil.copytree(template, work)
    monkeypatch.chdir(work)
    arguments = setup(work, monkeypatch)
    before = tree(work)
    outside = never_read(work)
    cli(arguments).error_line(fragment)
    assert [p for p in outside if p.stat().st_atime != 0] == [], "a file outside was read"
    after = tree(work)
    assert {k: after.get(k) for k in before} == before, "a file that existed was changed"
    left = [p for p in work.rglob("*") if p.suffix == ".tmp" or ".importing-" in p.name]
    assert not left, "a temporary file was left behind"
    assert not (work / "imported").exists() or not any((work / "imported").iterdir())
