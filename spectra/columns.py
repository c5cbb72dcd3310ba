"""Every column of a run's Parquet file, in one place: name, type, label, unit, and where it is
shown (the ``spectra analyze``/``compare`` summary, the live table of ``compute --follow``,
TensorBoard and W&B). The file's schema is these columns in this order; a metric's value
comes from the function of :mod:`spectra.metrics` that returns its name as a key. Adding a
column is its function plus one entry here (and a bump of :data:`SCHEMA_VERSION`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

F64 = pa.float64()
TOP_K = 10  # intruders: how many leading left singular vectors of W_t are examined
INTRUDER_EPS = 0.5  # intruders: a vector is new when no base vector has |cos| >= this
PRINCIPAL_FRAC = 0.1  # p = ⌈0.1 k⌉: W_0's principal subspace, the top decile of its spectrum
SPARSITY_ATOL = 1e-5  # |ΔW_ij| at or below this counts as untouched (Mukherjee et al.)


@dataclass(frozen=True)
class Column:
    """One Parquet column and where it is shown."""

    name: str
    type: pa.DataType
    label: str  # how tables and figures name it
    unit: str = ""  # "" when dimensionless
    required: bool = False  # never null
    finite: bool = False  # never NaN or infinite (no row is written for NaN weights)
    summary: bool = False  # a layer mean in the analyze/compare summary
    live: bool = False  # a layer mean in compute --follow's live table
    reported: bool = False  # a layer mean sent to TensorBoard and W&B while training


COLUMNS = (
    # which row: the run, the (step, layer) key, where the layer sits and its shape
    Column("run", pa.string(), "run", required=True),
    Column("method", pa.string(), "method", required=True),
    Column("step", pa.int64(), "step", required=True),
    Column("layer", pa.string(), "layer", required=True),
    Column("block", pa.int32(), "block"),
    Column("module", pa.string(), "module", required=True),
    Column("rows", pa.int32(), "rows"),
    Column("cols", pa.int32(), "cols"),
    # the float64 metrics
    Column("delta_sigma", F64, "ΔΣ", finite=True, summary=True, live=True, reported=True),
    Column("delta_d", F64, "ΔD", finite=True, summary=True, live=True, reported=True),
    Column(
        "delta_d_matched", F64, "ΔD matched", finite=True, summary=True, live=True, reported=True
    ),
    Column("cond_w", F64, "κ(W)"),
    Column("cond_p", F64, "κ(W_p)", summary=True, reported=True),
    Column("ortho_err", F64, "ortho_err", summary=True, reported=True),
    Column("sigma_max", F64, "σ_max", unit="weight"),
    Column("sigma_min", F64, "σ_min", unit="weight"),
    Column("fro_norm", F64, "‖W‖_F", unit="weight"),
    Column("stable_rank", F64, "stable rank"),
    Column("eff_rank", F64, "effective rank"),
    Column("delta_m", F64, "ΔM", unit="weight", summary=True, reported=True),
    Column("delta_dir", F64, "ΔD_dir", summary=True, reported=True),
    Column("amplification", F64, "amplification", summary=True),
    # the spectrum of ΔW = W_t − W_0 and W_0's principal subspace (spectra.spectrum)
    Column("dw_rank90", F64, "ΔW rank90", summary=True),
    Column("dw_eff_rank", F64, "ΔW effective rank"),
    Column("principal_energy", F64, "principal share", summary=True),
    Column("principal_angle", F64, "principal angle°", unit="degrees", summary=True),
    Column("update_sparsity", F64, "update sparsity"),
    # counts and lists
    Column("intruders", pa.int32(), "intruders", summary=True),
    Column("rank", pa.int32(), "rank"),
    Column("intruder_overlap", pa.list_(F64), "best |cos| of each top-k u_t^i"),
    Column("profile_dsigma", pa.list_(F64), "|σ_t − σ₀| / σ₀ per decile of W₀'s spectrum"),
    Column("profile_dvec", pa.list_(F64), "matched vector drift per decile of W₀'s spectrum"),
)
# raise when a column is added or a definition changes: older rows recompute
# (2: rank; 3: delta_m, delta_dir, amplification, intruder_overlap; 4: dw_rank90, dw_eff_rank,
# principal_energy, principal_angle, update_sparsity, profile_dsigma, profile_dvec)
SCHEMA_VERSION = 4
SCHEMA = pa.schema([(c.name, c.type) for c in COLUMNS])
BY_NAME = {c.name: c for c in COLUMNS}
KEY = ["step", "layer"]  # one row per (step, layer)
IDENTITY = ("run", "method", "step", "layer", "block", "module", "rows", "cols")
METRICS = tuple(c.name for c in COLUMNS if c.type == F64)  # the float64 metrics
REQUIRED = tuple(c.name for c in COLUMNS if c.required)
FINITE = tuple(c.name for c in COLUMNS if c.finite)
SUMMARY = {c.name: c.label for c in COLUMNS if c.summary}
LIVE = {c.name: c.label for c in COLUMNS if c.live}
REPORTED = tuple(c.name for c in COLUMNS if c.reported)


def label(name: str) -> str:
    """How tables and figures name a column (its name when it is not one)."""
    column = BY_NAME.get(name)
    return column.label if column else name
