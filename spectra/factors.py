"""The parametrization vocabulary: how stored tensors make a layer's W_t and its trainable W_p.

A snapshot stores each target layer in one of three parametrizations (its *kind*):

- ``dense``:   ``weight`` (m×n).  W_t = weight.  (FT)
- ``lowrank``: frozen ``base`` (m×n), per step ``left`` (m×r), ``right`` (r×n), ``scale`` (1)
  and optionally ``values`` (r).  W_p = scale · left · diag(values) · right, W_t = base + W_p.
  (LoRA, PiSSA, AdaLoRA, SORSA.)  ``values`` marks factors that are singular vectors
  (SORSA), which is what gives ``ortho_err`` a meaning.
- ``dora``:    frozen ``base``, per step ``left``, ``right``, ``scale``, ``magnitude`` (m).
  V = base + scale · left · right;  W_t = magnitude ⊙ V / ‖V‖_row  (peft's DoRA merge),
  W_p = scale · left · right.

Every part indexed by output feature (``ROW_PARTS``) can be cut to a subset of rows: the
rows of a slice of a fused projection (q of a fused qkv) are the slice of every row part,
for every kind, because W_t's rows depend only on the same rows of those parts.
Every tensor is cast to float64 *before* anything is multiplied.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from spectra.errors import SpectraError

KINDS = ("dense", "lowrank", "dora")
FROZEN_PARTS = {"dense": (), "lowrank": ("base",), "dora": ("base",)}
STEP_PARTS = {
    "dense": ("weight",),
    "lowrank": ("left", "right", "scale"),
    "dora": ("left", "right", "scale", "magnitude"),
}
OPTIONAL_PARTS = {"dense": (), "lowrank": ("values",), "dora": ()}
ROW_PARTS = ("weight", "base", "left", "magnitude")  # indexed by output feature
Rows = tuple[tuple[int, int], ...]  # half-open [start, stop) ranges of output rows, in order


class Layout(NamedTuple):
    """A module's parametrization: method name, kind, frozen and per-step tensors by part."""

    method: str
    kind: str
    frozen: dict[str, torch.Tensor]
    step: dict[str, torch.Tensor]


class Principal(NamedTuple):
    """W_p = left · diag(values) · right, the scale folded into ``values`` (or ``left``)."""

    left: torch.Tensor
    values: torch.Tensor | None
    right: torch.Tensor


def step_parts(kind: str) -> tuple[str, ...]:
    """Every per-step part a layer of ``kind`` may store, required ones first."""
    return STEP_PARTS[kind] + OPTIONAL_PARTS[kind]


def f64(t: torch.Tensor) -> torch.Tensor:
    """The tensor as a float64 CPU tensor."""
    return t.detach().to(device="cpu", dtype=torch.float64)


def check_parts(kind: str, parts: dict[str, torch.Tensor], where: str) -> tuple[int, int]:
    """(m, n) of W_t; SpectraError unless ``parts`` holds every tensor that ``kind`` needs, each
    floating point and of matching shape: ``weight``/``base`` m×n, ``left`` m×r, ``right`` r×n
    (r ≥ 1), ``scale`` one element, ``values`` r elements, ``magnitude`` m elements."""
    if kind not in KINDS:
        raise SpectraError(f"{where}: unknown layer kind {kind!r} (expected one of {KINDS})")
    missing = [p for p in FROZEN_PARTS[kind] + STEP_PARTS[kind] if p not in parts]
    if missing:
        raise SpectraError(f"{where}: missing tensors {missing} for a {kind} layer")
    check_floating(parts, where)
    m, n = _matrix(parts, "weight" if kind == "dense" else "base", where)
    if kind == "dense":
        return m, n
    r = _matrix(parts, "left", where)[1]
    want = {"left": (m, r), "right": (r, n)}
    for part, shape in want.items():
        if tuple(parts[part].shape) != shape:
            got = tuple(parts[part].shape)
            raise SpectraError(
                f"{where}: {part} has shape {got}, expected {shape} (base {m}×{n}, rank {r})"
            )
    counts = {"scale": 1, "values": r, "magnitude": m}
    for part, count in counts.items():
        if part in parts and parts[part].numel() != count:
            raise SpectraError(
                f"{where}: {part} has {parts[part].numel()} elements, expected {count}"
            )
    return m, n


def check_floating(parts: dict[str, torch.Tensor], where: str) -> None:
    """SpectraError unless every part is a floating-point tensor (what the engine reads)."""
    for part, t in parts.items():
        if not t.is_floating_point():
            raise SpectraError(f"{where}: {part} has dtype {t.dtype}, expected a floating type")


def _matrix(parts: dict[str, torch.Tensor], part: str, where: str) -> tuple[int, int]:
    """The shape of a non-empty 2-D part; SpectraError otherwise."""
    shape = tuple(parts[part].shape)
    if len(shape) != 2:
        raise SpectraError(f"{where}: {part} has shape {shape}, expected a 2-D matrix")
    if 0 in shape:
        raise SpectraError(f"{where}: {part} is empty (shape {shape})")
    return shape


def row_count(rows: Rows) -> int:
    """How many output rows the ranges select."""
    return sum(stop - start for start, stop in rows)


def slice_rows(parts: dict[str, torch.Tensor], rows: Rows) -> dict[str, torch.Tensor]:
    """The parts of the layer made of the given output rows (the other parts unchanged)."""
    index = torch.cat([torch.arange(start, stop) for start, stop in rows])
    return {p: t.index_select(0, index) if p in ROW_PARTS else t for p, t in parts.items()}


def principal(kind: str, parts: dict[str, torch.Tensor]) -> Principal | None:
    """The trainable low-rank part W_p as float64 factors; None for dense layers."""
    if kind == "dense":
        return None
    left, right, scale = f64(parts["left"]), f64(parts["right"]), f64(parts["scale"]).reshape(())
    if "values" in parts:  # singular-vector factors stay orthonormal: scale the values
        return Principal(left, scale * f64(parts["values"]).reshape(-1), right)
    return Principal(scale * left, None, right)


def live(p: Principal) -> Principal:
    """W_p's live components: those whose row of ``right`` (and value, where stored) is not
    zero. AdaLoRA's pruned triplets are the dead ones (λ_i = 0 zeroes row i of A ⊙ λ); the
    other methods keep all r. W_p is the same matrix with or without the dead ones."""
    keep = p.right.ne(0).any(dim=1)
    if p.values is not None:
        keep &= p.values.ne(0)
    values = None if p.values is None else p.values[keep]
    return Principal(p.left[:, keep], values, p.right[keep])


def product(p: Principal) -> torch.Tensor:
    """W_p as a dense float64 matrix."""
    left = p.left if p.values is None else p.left * p.values
    return left @ p.right


def effective_weight(kind: str, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """W_t in float64, merged exactly as the method merges it."""
    if kind == "dense":
        return f64(parts["weight"])
    merged = f64(parts["base"]) + product(principal(kind, parts))
    if kind == "lowrank":
        return merged
    norm = torch.linalg.vector_norm(merged, dim=1, keepdim=True)
    return f64(parts["magnitude"]).reshape(-1, 1) * merged / norm


def update_factors(p0: Principal, pt: Principal) -> tuple[torch.Tensor, torch.Tensor]:
    """(left, right) with ΔW = W_t − W_0 = left · right for a ``lowrank`` layer.

    W_t and W_0 share the frozen base, so ΔW = W_p(t) − W_p(0) = [L_t, −L_0] [R_t; R_0]
    (values folded into the left factors): rank ≤ 2r, and ≤ r when W_p(0) = 0 (LoRA,
    AdaLoRA), whose zero half is left out.
    """
    lefts, rights = [], []
    for sign, p in ((1.0, pt), (-1.0, p0)):
        left = p.left if p.values is None else p.left * p.values
        if left.any() and p.right.any():
            lefts.append(sign * left)
            rights.append(p.right)
    if not lefts:  # ΔW = 0
        return pt.left[:, :0], pt.right[:0]
    return torch.cat(lefts, dim=1), torch.cat(rights, dim=0)
