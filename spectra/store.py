"""The Parquet file of a run: schema, key-value metadata, reading many runs into one frame.

``runs/<run>.parquet`` holds one row per (step, layer). The run's metadata (its manifest and
the engine settings) is JSON under the key ``spectra`` of the Parquet key-value metadata, so
pandas, polars or DuckDB read the file with no spectra import.
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from spectra.errors import SpectraError
from spectra.snapshots import atomic_write

METHOD_ORDER = ("ft", "lora", "pissa", "dora", "adalora", "sorsa-noreg", "sorsa")
METHOD_LABELS = {
    "ft": "FT",
    "lora": "LoRA",
    "pissa": "PiSSA",
    "dora": "DoRA",
    "adalora": "AdaLoRA",
    "sorsa-noreg": "SORSA w/o reg",
    "sorsa": "SORSA",
}
METADATA_KEY = b"spectra"
METRICS = (
    "delta_sigma", "delta_d", "delta_d_matched", "cond_w", "cond_p", "ortho_err",
    "sigma_max", "sigma_min", "fro_norm", "stable_rank", "eff_rank",
    "delta_m", "delta_dir", "amplification",
)  # fmt: skip
SCHEMA = pa.schema(
    [
        ("run", pa.string()),
        ("method", pa.string()),
        ("step", pa.int64()),
        ("layer", pa.string()),
        ("block", pa.int32()),
        ("module", pa.string()),
        ("rows", pa.int32()),
        ("cols", pa.int32()),
        *[(name, pa.float64()) for name in METRICS],
        ("intruders", pa.int32()),
        ("rank", pa.int32()),
        ("intruder_overlap", pa.list_(pa.float64())),  # best |cos| of each top-k u_t^i
    ]
)
# raise when a column is added or a definition changes: older rows recompute
# (2: rank; 3: delta_m, delta_dir, amplification, intruder_overlap)
SCHEMA_VERSION = 3
KEY = ["step", "layer"]


def layer_position(layer: str) -> tuple[int | None, str]:
    """(block, module) of a module path: the first numeric component and the last component.

    ``model.layers.3.self_attn.q_proj`` → (3, "q_proj"); ``lm_head`` → (None, "lm_head").
    """
    parts = layer.split(".")
    block = next((int(p) for p in parts if re.fullmatch(r"\d+", p)), None)
    return block, parts[-1]


def to_table(rows: pd.DataFrame, metadata: dict) -> pa.Table:
    """Rows in the spectra schema, sorted by (step, layer), with ``metadata`` attached."""
    frame = rows.sort_values(KEY, kind="stable").reset_index(drop=True)
    table = pa.Table.from_pandas(frame[SCHEMA.names], schema=SCHEMA, preserve_index=False)
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True)})


def write_run(path: str | Path, rows: pd.DataFrame, metadata: dict) -> None:
    """Write (or atomically replace) the Parquet file of one run."""
    table = to_table(rows, metadata)
    atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))


def read_run(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """(rows, metadata) of one spectra Parquet file; SpectraError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise SpectraError(f"no such file: {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise SpectraError(f"{path} is not a readable Parquet file: {exc}") from None
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None or not set(KEY) <= set(table.column_names):
        raise SpectraError(f"{path} is not a spectra run (no spectra metadata or columns)")
    for field in SCHEMA:  # a column added since the file was written: null
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(len(table), field.type))
    try:
        metadata = json.loads(raw)
    except ValueError:
        raise SpectraError(f"{path} has corrupt spectra metadata") from None
    if metadata.get("run_dir"):  # stored relative to the Parquet file
        metadata["run_dir"] = str((path.parent / metadata["run_dir"]).resolve())
    return table.to_pandas(), metadata


def expand(patterns: Iterable[str | Path]) -> list[Path]:
    """Paths from file names and glob patterns, in order, without duplicates."""
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(pattern))) or []
        if not matches:
            raise SpectraError(f"no run files match {pattern}")
        paths += [Path(m) for m in matches if Path(m) not in paths]
    return paths


def read_runs(patterns: Iterable[str | Path]) -> pd.DataFrame:
    """All rows of many runs (file names or globs) in one frame, in the order given.

    ``frame.attrs["runs"]`` maps each run name to its metadata (which includes ``run_dir``,
    the run directory holding ``train_log.parquet``).
    """
    frames, metadata = [], {}
    for path in expand(patterns):
        rows, meta = read_run(path)
        frames.append(rows)
        metadata[meta["run"]] = meta
    frame = pd.concat(frames, ignore_index=True)
    frame.attrs["runs"] = metadata
    return frame


def load_runs(patterns: Iterable[str | Path]) -> pd.DataFrame:
    """Rows of the runs named by files or globs; SpectraError on duplicate or empty runs."""
    patterns = list(patterns)
    frame = read_runs(patterns)
    names = frame.attrs["runs"]
    if len(names) < len(expand(patterns)):
        raise SpectraError("two run files hold the same run name; rename one of the runs")
    empty = [name for name in names if not (frame["run"] == name).any()]
    if empty:
        raise SpectraError(f"run {empty[0]} has no rows: compute its metrics first")
    return frame


def label(method: str) -> str:
    """The display name of a method."""
    return METHOD_LABELS.get(method, method)


def ordered_runs(frame: pd.DataFrame) -> list[str]:
    """Run names ordered by method (FT, LoRA, …, SORSA w/o reg, SORSA), then by name."""
    methods = frame.groupby("run", sort=False)["method"].first()

    def key(run: str) -> tuple[int, str]:
        method = methods[run]
        rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
        return rank, run

    return sorted(methods.index, key=key)


def comparison_step(frame: pd.DataFrame) -> int:
    """The last step after 0 present in every run; SpectraError when there is none."""
    steps = [set(g["step"]) - {0} for _, g in frame.groupby("run", sort=False)]
    common = set.intersection(*steps)
    if not common:
        spans = ", ".join(
            f"{run} {g['step'].min()}..{g['step'].max()}" for run, g in frame.groupby("run")
        )
        raise SpectraError(f"the runs share no step after step 0 ({spans})")
    return max(common)


def delta_d_column(matched: bool) -> str:
    """The ΔD column: index-matched (the paper's) or sign-invariant matched."""
    return "delta_d_matched" if matched else "delta_d"


def delta_d_name(matched: bool) -> str:
    """Which ΔD a view shows, in words."""
    return "sign-invariant matched" if matched else "index-matched, the paper's"
