"""The Parquet file of a run: schema, key-value metadata, reading many runs into one frame.

``runs/<run>.parquet`` holds one row per (step, layer). The run's metadata (its manifest and
the engine settings) is JSON under the key ``spectra`` of the Parquet key-value metadata, so
pandas, polars or DuckDB read the file with no spectra import.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from spectra.atomic import atomic_write
from spectra.columns import FINITE, KEY, REQUIRED, SCHEMA
from spectra.errors import SpectraError
from spectra.limits import loads
from spectra.methods import label, order
from spectra.run_files import PARQUET
from spectra.typedjson import text

STEP_POLICIES = ("last", "common")  # besides a step number: see comparison_steps
METADATA_KEY = b"spectra"
METADATA_TEXT = {"run": True, "method": True, "run_dir": False, "run_id": False}  # field: required


def run_metadata(path: str | Path) -> dict:
    """The spectra metadata of the Parquet file ``path`` (its schema only is read);
    SpectraError when it is not a spectra run file."""
    try:
        raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
    except (pa.ArrowException, OSError) as exc:
        raise SpectraError(f"{path} is not a readable Parquet file: {exc}") from None
    if raw is None:
        raise SpectraError(f"{path} is not a spectra run (no spectra metadata)")
    return _metadata(raw, Path(path))


def read_own_rows(path: str | Path, run: str) -> tuple[pd.DataFrame, dict] | None:
    """(rows, metadata) of run ``run``'s Parquet file ``path`` without any (step, layer) that
    has several rows (to be computed again), None when there is none; SpectraError when
    ``path`` is another file (not spectra's, or another run's), which is never overwritten."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        rows, meta = _read(path)
    except SpectraError:
        raise SpectraError(
            f"{path} exists and is not a spectra run file; refusing to overwrite it"
        ) from None
    if meta["run"] != run:
        raise SpectraError(
            f"{path} holds run {meta['run']!r}, not {run!r}; refusing to overwrite it"
        )
    return rows.drop_duplicates(KEY, keep=False), meta  # rows twice over: computed again


def drop_rows_after(path: str | Path, step: int, run_id: str | None, resumed: list[int]) -> None:
    """Rewrite run ``run_id``'s Parquet file without its rows after ``step`` (a training resumed
    from ``step`` discarded their snapshots), recording the resumes (``resumed``); the rows of
    another identity are left to the engine, which computes that run from scratch."""
    path = Path(path)
    table = pq.read_table(path)
    meta = loads(table.schema.metadata[METADATA_KEY], path)
    if meta.get("run_id") != run_id:
        return
    kept = table.filter(pc.less_equal(table.column("step"), step))
    meta["resumed"] = resumed
    kept = kept.replace_schema_metadata({METADATA_KEY: json.dumps(meta, sort_keys=True)})
    atomic_write(path, lambda tmp: pq.write_table(kept, tmp))


def layer_position(layer: str) -> tuple[int | None, str]:
    """(block, module) of a module path: the first numeric component and the last component.

    ``model.layers.3.self_attn.q_proj`` → (3, "q_proj"); ``lm_head`` → (None, "lm_head"); an
    MoE expert's module is its parameter's (``….experts.down_proj[5]`` → "down_proj").
    """
    parts = layer.split(".")
    block = next((int(p) for p in parts if re.fullmatch(r"\d+", p)), None)
    return block, re.sub(r"\[\d+\]$", "", parts[-1])


def to_table(rows: pd.DataFrame, metadata: dict) -> pa.Table:
    """Rows in the spectra schema, sorted by (step, layer), with ``metadata`` attached."""
    frame = rows.sort_values(KEY, kind="stable").reset_index(drop=True)
    table = pa.Table.from_pandas(frame[SCHEMA.names], schema=SCHEMA, preserve_index=False)
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True)})


def write_rows(path: str | Path, rows: pd.DataFrame, metadata: dict) -> None:
    """Write (or atomically replace) the Parquet file of one run."""
    table = to_table(rows, metadata)
    atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))


def read_run(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """(rows, metadata) of one spectra Parquet file; SpectraError if it is not one, or if it
    holds more than one row of a (step, layer)."""
    rows, metadata = _read(path)
    twice = rows[rows.duplicated(KEY, keep=False)]
    if len(twice):
        step, layer = twice.iloc[0][KEY]
        raise SpectraError(
            f"{path} holds {len(twice)} rows of repeated (step, layer) pairs (step {step} "
            f"layer {layer}, …); compute the run again"
        )
    return rows, metadata


def _read(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """(rows, metadata) of one spectra Parquet file, duplicates and all."""
    path = Path(path)
    if not path.is_file():
        raise SpectraError(f"no such file: {path}")
    try:
        table = pq.read_table(path)
        table.validate(full=True)  # e.g. strings that are not UTF-8
    except (pa.ArrowException, OSError) as exc:
        raise SpectraError(f"{path} is not a readable Parquet file: {exc}") from None
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None or not set(KEY) <= set(table.column_names):
        raise SpectraError(f"{path} is not a spectra run (no spectra metadata or columns)")
    for field in SCHEMA:  # a column added since the file was written: null
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(len(table), field.type))
    metadata = _metadata(raw, path)
    table = _columns(table, metadata["run"], path)
    if metadata.get("run_dir"):  # stored relative to the Parquet file
        metadata["run_dir"] = str((path.parent / metadata["run_dir"]).resolve())
    return table.replace_schema_metadata(None).to_pandas(), metadata  # (pandas': not spectra's)


def _metadata(raw: bytes, path: Path) -> dict:
    """The spectra metadata of a Parquet file, its fields checked."""
    try:
        metadata = loads(raw, path)
    except ValueError:
        raise SpectraError(f"{path} has corrupt spectra metadata (not UTF-8 JSON)") from None
    if not isinstance(metadata, dict):
        raise SpectraError(f"{path} has corrupt spectra metadata (not a JSON object)")
    for key, required in METADATA_TEXT.items():
        value = metadata.get(key)
        if value is None and not required:
            continue
        if not isinstance(value, str) or not value or "\x00" in value:
            raise SpectraError(
                f"{path}: spectra metadata field {key!r} must be a non-empty "
                f"string, not {ascii(value)[:40]}"
            )
        text(value, f"{path}: spectra metadata field {key!r}")
    return metadata


def _all_finite(column: pa.ChunkedArray) -> bool:
    """Whether every value is a finite number (true of no values at all)."""
    return column.null_count == 0 and pc.all(pc.is_finite(column)).as_py() is not False


def _columns(table: pa.Table, run: str, path: Path) -> pa.Table:
    """The table with every spectra column in its schema type; SpectraError when one cannot be
    (a wrong type, nulls where a value is needed, rows of another run)."""
    for spec in SCHEMA:
        column = table.column(spec.name)
        if column.type != spec.type:
            try:
                column = column.cast(spec.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                raise SpectraError(
                    f"{path}: column {spec.name!r} has type {column.type}, expected {spec.type}"
                ) from None
            table = table.set_column(table.column_names.index(spec.name), spec.name, column)
        if spec.name in REQUIRED and column.null_count:
            raise SpectraError(f"{path}: column {spec.name!r} has empty values")
        if spec.name in FINITE and not _all_finite(column):
            raise SpectraError(f"{path}: column {spec.name!r} has NaN, infinite or empty values")
    others = pc.unique(pc.filter(table.column("run"), pc.not_equal(table.column("run"), run)))
    if len(others):
        raise SpectraError(
            f"{path} holds rows of run {others[0].as_py()!r}, its metadata says {run!r}"
        )
    return table


def expand(patterns: Iterable[str | Path]) -> list[Path]:
    """Paths from file names, glob patterns and folders (their ``*.parquet`` files), in order,
    without duplicates; a name that exists is that file, even when it reads as a pattern."""
    paths: list[Path] = []
    for pattern in patterns:
        pattern = str(pattern)  # a file named like a glob (lora[r16].parquet) is itself
        if Path(pattern).is_dir():
            matches = sorted(str(p) for p in Path(pattern).glob(f"*{PARQUET}"))
            if not matches:
                raise SpectraError(f"{pattern} holds no run files (*{PARQUET})")
        else:
            matches = [pattern] if os.path.lexists(pattern) else sorted(glob.glob(pattern))
            if not matches:
                raise SpectraError(f"no run files match {pattern}")
        paths += [Path(m) for m in matches if Path(m) not in paths]
    return paths


def run_labels(paths: list[Path], names: list[str]) -> list[str]:
    """The run names, each one that several files share prefixed by the fewest folders that
    tell those files apart (``a/lora``, ``b/lora``; the file paths when they share a folder)."""
    labels = list(names)
    for name in dict.fromkeys(names):
        same = [i for i, n in enumerate(names) if n == name]
        if len(same) < 2:
            continue
        folders = [paths[i].resolve().parent.parts for i in same]
        for depth in range(1, max(map(len, folders)) + 1):
            tried = ["/".join((*folder[-depth:], name)) for folder in folders]
            if len(set(tried)) == len(tried):
                break
        else:
            tried = [str(paths[i]) for i in same]
        for i, new in zip(same, tried, strict=True):
            labels[i] = new
    clash = next((n for n in labels if labels.count(n) > 1), None)
    if clash is not None:
        files = [str(p) for p, n in zip(paths, labels, strict=True) if n == clash]
        raise SpectraError(
            f"{files[0]} and {files[1]} both hold a run called {clash!r}; rename one of the runs"
        )
    return labels


@dataclass(frozen=True)
class Runs:
    """The rows of several runs in one frame, and the metadata of each run, by run name.

    Runs are named by their run name; runs that share a name (two seeds in ``a/lora`` and
    ``b/lora``) by the name prefixed with their folders (see :func:`run_labels`). A run's
    metadata is its Parquet metadata (the manifest, the engine settings and ``run_dir``, the
    run directory holding ``train_log.parquet``).
    """

    rows: pd.DataFrame
    meta: dict[str, dict]

    @property
    def names(self) -> list[str]:
        """The run names by method (FT, LoRA, …, SORSA w/o reg, SORSA), then by name."""
        return sorted(self.meta, key=lambda run: (order(self.method(run)), run))

    def method(self, run: str) -> str:
        """The method of a run."""
        return self.meta[run]["method"]

    def title(self, run: str) -> str:
        """ "LoRA" for a run named after its method, else "LoRA — <run>"."""
        method = self.method(run)
        return label(method) if run == method else f"{label(method)} — {run}"

    def short(self, run: str) -> str:
        """ "LoRA" for a run named after its method, else the run's name."""
        return label(self.method(run)) if run == self.method(run) else run

    def ordinal(self, run: str) -> bool:
        """Whether a run's steps only order checkpoints of unknown step (1, 2, …, imported
        without step numbers; a model imported alone is a final model)."""
        return bool(self.meta[run].get("manifest", {}).get("ordinal_steps", False))

    def step_label(self, run: str, step: int) -> str:
        """A step as a reader should see it: "step 40", or "its final model" / "checkpoint 2
        of 3" for checkpoints of unknown step."""
        if not self.ordinal(run) or step == 0:
            return f"step {step}"
        last = int(self.of(run)["step"].max())
        return "its final model" if step == last else f"checkpoint {step} of {last}"

    def of(self, run: str) -> pd.DataFrame:
        """The rows of one run."""
        return self.rows[self.rows["run"] == run]

    def with_rows(self, rows: pd.DataFrame) -> Runs:
        """The same runs with only ``rows`` (a selection of layers)."""
        return Runs(rows, self.meta)


def read_runs(patterns: Iterable[str | Path]) -> Runs:
    """All rows of many runs (file names or globs), in the order given."""
    paths = expand(patterns)
    runs = [read_run(path) for path in paths]
    names = run_labels(paths, [meta["run"] for _, meta in runs])
    frames = [rows.assign(run=name) for (rows, _), name in zip(runs, names, strict=True)]
    meta = {name: meta for (_, meta), name in zip(runs, names, strict=True)}
    return Runs(pd.concat(frames, ignore_index=True), meta)


def load_runs(patterns: Iterable[str | Path]) -> Runs:
    """The runs named by files or globs; SpectraError when a run has no rows."""
    runs = read_runs(patterns)
    empty = [name for name in runs.meta if not (runs.rows["run"] == name).any()]
    if empty:
        raise SpectraError(f"run {empty[0]} has no rows: compute its metrics first")
    return runs


def parse_step(text: str) -> str | int:
    """A ``--step`` option: ``last``, ``common`` or a step number."""
    text = text.strip().lower()
    if text in STEP_POLICIES:
        return text
    if not text.isdigit() or len(text) > 18:
        raise SpectraError(f"--step {text!r}: use last, common or a step number")
    return int(text)


def comparison_steps(runs: Runs, policy: str | int = "last") -> dict[str, int]:
    """The step each run is compared at: its last step (``last``), the last step after 0 that
    every run has (``common``), or a given step number; SpectraError when there is none."""
    present = {run: set(runs.of(run)["step"]) for run in runs.names}
    if policy == "last":
        return {run: max(steps) for run, steps in present.items()}
    if policy == "common":
        common = set.intersection(*present.values()) - {0}
        if not common:
            spans = ", ".join(f"{run} {min(s)}..{max(s)}" for run, s in present.items())
            raise SpectraError(f"the runs share no step after step 0 ({spans})")
        return dict.fromkeys(present, max(common))
    lacking = [run for run, steps in present.items() if policy not in steps]
    if lacking:
        raise SpectraError(
            f"step {policy} is not in {', '.join(lacking)}; use --step last or common"
        )
    return dict.fromkeys(present, policy)


def steps_text(runs: Runs, steps: dict[str, int], policy: str | int = "last") -> str:
    """Where runs are compared, in words: "step 40, the last step every run has", "each run's
    last step (ft step 60, final-ft its final model)"."""
    if len(set(steps.values())) == 1 and not any(runs.ordinal(run) for run in steps):
        step = next(iter(steps.values()))
        why = {"last": "the last step of every run", "common": "the last step every run has"}
        return f"step {step}" + (f", {why[policy]}" if policy in why else "")
    where = ", ".join(f"{run} {runs.step_label(run, step)}" for run, step in steps.items())
    return f"each run's {'last step' if policy == 'last' else 'step'} ({where})"


def delta_d_column(matched: bool) -> str:
    """The ΔD column: index-matched (the paper's) or sign-invariant matched."""
    return "delta_d_matched" if matched else "delta_d"


def delta_d_name(matched: bool) -> str:
    """Which ΔD a view shows, in words."""
    return "sign-invariant matched" if matched else "index-matched, the paper's"
