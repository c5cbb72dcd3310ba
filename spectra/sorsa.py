"""SORSA adapters for ``nn.Linear`` (paper Section 3, Appendix A), merge, save/load, regularizer.

A pre-trained weight W (out×in) is split by SVD into a frozen residual W_r and a trainable
principal part W_p = U_p diag(S_p) V_pᵀ of rank r.  The attribute names follow the reference
``sorsa`` package, so code that reads that layout reads these modules too:

- ``weight``  W_r (out×in), frozen;  ``bias`` frozen or None
- ``sorsa_B`` U_p (out×r), ``sorsa_S`` S_p (r), ``sorsa_A`` V_pᵀ (r×in), trainable
- ``scale``   1.0;  effective W = weight + scale · (sorsa_B ⊙ sorsa_S) sorsa_A
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from spectra.capture import find_targets, module_paths
from spectra.errors import SpectraError

FACTORS = ("sorsa_A", "sorsa_S", "sorsa_B")


def principal_eq3(b: torch.Tensor, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """W_p as eq. 3 writes it: U_p diag(S_p) V_pᵀ, two matrix products."""
    return b @ torch.diag(s) @ a


def principal_eq15(b: torch.Tensor, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """W_p as eq. 15 computes it: (U_p ⊙ S_p) V_pᵀ, one product and a column scaling."""
    return (b * s) @ a


class SORSALinear(nn.Module):
    """A linear layer whose top-r singular triplets are trainable (SORSA)."""

    def __init__(self, base: nn.Linear, rank: int, name: str = "linear"):
        super().__init__()
        out_features, in_features = base.weight.shape
        if not 0 < rank <= min(out_features, in_features):
            raise SpectraError(
                f"{name}: rank {rank} is out of range for a {out_features}×{in_features} matrix "
                f"(1..{min(out_features, in_features)})"
            )
        self.in_features, self.out_features, self.r = in_features, out_features, rank
        self.scale = 1.0
        self.merged = False
        dtype = base.weight.dtype
        w = base.weight.detach().to(torch.float64)
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        b, s, a = u[:, :rank], s[:rank], vh[:rank]
        residual = w - principal_eq15(b, s, a)
        self.weight = nn.Parameter(residual.to(dtype), requires_grad=False)
        bias = None if base.bias is None else nn.Parameter(base.bias.detach().clone(), False)
        self.register_parameter("bias", bias)
        self.sorsa_A = nn.Parameter(a.to(dtype).contiguous())
        self.sorsa_S = nn.Parameter(s.to(dtype).contiguous())
        self.sorsa_B = nn.Parameter(b.to(dtype).contiguous())

    def delta(self) -> torch.Tensor:
        """scale · W_p, by eq. 15."""
        return self.scale * principal_eq15(self.sorsa_B, self.sorsa_S, self.sorsa_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (W_r + W_p)ᵀ + bias with W_p formed by eq. 15; just W when merged."""
        if self.merged:
            return F.linear(x, self.weight, self.bias)
        return F.linear(x, self.weight + self.delta(), self.bias)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold W_p into ``weight`` (inference); forward then costs one plain matmul."""
        if not self.merged:
            self.weight += self.delta()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take W_p back out of ``weight``."""
        if self.merged:
            self.weight -= self.delta()
            self.merged = False

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, scale={self.scale}"


def _replace(model: nn.Module, name: str, rank: int) -> SORSALinear:
    """Swap the ``nn.Linear`` at ``name`` for a SORSA adapter of rank ``rank``."""
    parent_name, _, child = name.rpartition(".")
    try:
        base = model.get_submodule(name)
    except AttributeError:
        raise SpectraError(f"the model has no module {name}") from None
    if not isinstance(base, nn.Linear):
        raise SpectraError(f"{name} is a {type(base).__name__}, SORSA needs nn.Linear")
    adapter = SORSALinear(base, rank, name)
    setattr(model.get_submodule(parent_name), child, adapter)
    return adapter


def apply_sorsa(model: nn.Module, targets: str | Sequence[str], rank: int) -> list[str]:
    """Replace the target ``nn.Linear`` modules by SORSA adapters; freeze everything else.

    Targets follow :func:`spectra.capture.resolve` (a slice of a fused projection adapts the
    whole module). Returns the adapted module paths.  Raises
    SpectraError when a target matches nothing or is not a linear layer, or when ``rank``
    exceeds a matrix's min(out, in).
    """
    names = module_paths(find_targets(model, targets))
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        _replace(model, name, rank)
    return names


def sorsa_modules(model: nn.Module) -> dict[str, SORSALinear]:
    """The SORSA adapters of a model by module path."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SORSALinear)}


def regularizer(modules: Iterable[SORSALinear]) -> torch.Tensor:
    """L_reg of eq. 4 averaged as the reference does: the mean of ‖AAᵀ − I‖_F and ‖BᵀB − I‖_F
    over every factor (2 per adapted matrix)."""
    terms = []
    for m in modules:
        eye = torch.eye(m.r, device=m.sorsa_A.device, dtype=m.sorsa_A.dtype)
        terms.append(torch.linalg.matrix_norm(m.sorsa_A @ m.sorsa_A.T - eye))
        terms.append(torch.linalg.matrix_norm(m.sorsa_B.T @ m.sorsa_B - eye))
    if not terms:
        raise SpectraError("the model has no SORSA adapters to regularize")
    return torch.stack(terms).mean()


def regularizer_backward(modules: Iterable[SORSALinear], gamma: float, peak_lr: float) -> float:
    """Eq. 6: add (γ/η_d)·∇L_reg to the factors' gradients; return L_reg.

    η_d is the peak learning rate of the schedule, so one optimizer and scheduler update
    W_p with lr η_t on the task loss and an effective γ·η_t/η_d on the regularizer.
    γ = 0 (SORSA w/o reg) only measures L_reg.
    """
    modules = list(modules)
    if gamma == 0:
        with torch.no_grad():
            return regularizer(modules).item()
    loss = regularizer(modules)
    (loss * (gamma / peak_lr)).backward()
    return loss.item()


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write the SORSA factors (and rank, scale, module paths) to one safetensors file."""
    modules = sorsa_modules(model)
    if not modules:
        raise SpectraError("the model has no SORSA adapters to save")
    tensors = {f"{n}.{f}": getattr(m, f).detach().cpu().contiguous() for n, m in modules.items()
               for f in FACTORS}  # fmt: skip
    meta = {n: {"rank": m.r, "scale": m.scale} for n, m in modules.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"sorsa": json.dumps(meta)})
    return path


def load_adapter(model: nn.Module, path: str | Path) -> list[str]:
    """Load factors written by ``save_adapter``, applying SORSA to the base model first.

    W_r is rebuilt from the base weights (it depends only on the top-r singular subspace,
    not on SVD signs), then the trained U_p, S_p, V_pᵀ replace the initial ones.
    """
    path = Path(path)
    if not path.is_file():
        raise SpectraError(f"{path}: no such adapter file")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("sorsa", "{}"))
    if not isinstance(meta, dict) or not meta:
        raise SpectraError(f"{path}: not a spectra SORSA adapter (no 'sorsa' metadata)")
    tensors = load_file(str(path))
    present = sorsa_modules(model)
    for name, info in meta.items():
        module = present.get(name) or _replace(model, name, int(info["rank"]))
        module.scale = float(info["scale"])
        for f in FACTORS:
            _copy_factor(getattr(module, f), tensors.get(f"{name}.{f}"), f"{path}: {name}.{f}")
    return list(meta)


@torch.no_grad()
def _copy_factor(param: nn.Parameter, value: torch.Tensor | None, where: str) -> None:
    """Copy a stored factor into its parameter, or raise SpectraError naming the mismatch."""
    if value is None or value.shape != param.shape:
        got = "missing" if value is None else f"shape {tuple(value.shape)}"
        raise SpectraError(f"{where}: {got}, expected shape {tuple(param.shape)}")
    param.copy_(value)
