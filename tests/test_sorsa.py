"""SORSA adapter: SVD init, eq. 3 vs eq. 15, merge, save/load, regularizer and eq. 6."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from spectra.errors import SpectraError
from spectra.sorsa import (
    SORSALinear,
    apply_sorsa,
    load_adapter,
    principal_eq3,
    principal_eq15,
    regularizer,
    regularizer_backward,
    save_adapter,
    sorsa_modules,
)


def _linear(out_f: int = 48, in_f: int = 32, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f, bias=bias)


def _effective(m: SORSALinear) -> torch.Tensor:
    return m.weight + m.delta()


class Toy(nn.Module):
    """Two blocks with q/v projections and one other linear, like a tiny attention stack."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "q_proj": nn.Linear(16, 24),
                    "v_proj": nn.Linear(16, 24, bias=False),
                    "o_proj": nn.Linear(24, 16),
                }
            )
            for _ in range(2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = x + b["o_proj"](b["q_proj"](x) * b["v_proj"](x))
        return x


def _perturb(model: nn.Module, seed: int = 2) -> None:
    """Move the factors off their SVD values, as training would."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in sorsa_modules(model).values():
            for p in (m.sorsa_A, m.sorsa_S, m.sorsa_B):
                p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("shape", [(48, 32), (32, 48), (64, 64)])
def test_init_reproduces_weight_fp32(shape: tuple[int, int]) -> None:
    base = _linear(*shape)
    w0 = base.weight.detach().clone()
    m = SORSALinear(base, rank=8)
    assert m.weight.dtype == torch.float32
    assert (_effective(m) - w0).abs().max().item() <= 1e-6
    assert not m.weight.requires_grad and not m.bias.requires_grad
    assert all(p.requires_grad for p in (m.sorsa_A, m.sorsa_S, m.sorsa_B))
    assert m.sorsa_A.shape == (8, shape[1]) and m.sorsa_B.shape == (shape[0], 8)
    assert m.scale == 1.0
    # the principal part carries the top-8 singular values, in descending order
    s = torch.linalg.svdvals(w0.double())
    torch.testing.assert_close(m.sorsa_S.double(), s[:8], rtol=1e-6, atol=1e-6)


def test_forward_matches_base_and_eq3() -> None:
    base = _linear()
    x = torch.randn(5, 7, 32)
    expected = base(x)
    m = SORSALinear(base, rank=6)
    _perturb_module(m)
    via_eq3 = x @ (m.weight + principal_eq3(m.sorsa_B, m.sorsa_S, m.sorsa_A)).T + m.bias
    torch.testing.assert_close(m(x), via_eq3, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        principal_eq15(m.sorsa_B, m.sorsa_S, m.sorsa_A),
        principal_eq3(m.sorsa_B, m.sorsa_S, m.sorsa_A),
    )
    assert not torch.allclose(m(x), expected, atol=1e-3)  # the perturbation shows


def _perturb_module(m: SORSALinear) -> None:
    with torch.no_grad():
        m.sorsa_S.mul_(1.5)
        m.sorsa_A.add_(0.05)


def test_forward_at_init_equals_base() -> None:
    base = _linear()
    x = torch.randn(4, 32)
    expected = base(x)
    torch.testing.assert_close(SORSALinear(base, rank=5)(x), expected, rtol=1e-5, atol=1e-5)


def test_merge_unmerge_round_trip() -> None:
    m = SORSALinear(_linear(), rank=6)
    _perturb_module(m)
    x = torch.randn(3, 32)
    w_r, y = m.weight.detach().clone(), m(x)
    m.merge()
    assert m.merged
    torch.testing.assert_close(m(x), y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.weight, w_r + m.delta(), rtol=0, atol=1e-6)
    m.merge()  # idempotent
    m.unmerge()
    assert not m.merged
    assert (m.weight - w_r).abs().max().item() <= 1e-6
    torch.testing.assert_close(m(x), y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rank", [0, 25, 100])
def test_rank_out_of_range(rank: int) -> None:
    with pytest.raises(SpectraError, match="rank"):
        SORSALinear(_linear(48, 24), rank=rank)


def test_apply_sorsa_targets_and_freezing() -> None:
    model = Toy()
    x = torch.randn(3, 16)
    y = model(x)
    names = apply_sorsa(model, ["q_proj", "v_proj"], rank=4)
    assert names == ["blocks.0.q_proj", "blocks.0.v_proj", "blocks.1.q_proj", "blocks.1.v_proj"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{f}" for n in names for f in ("sorsa_A", "sorsa_S", "sorsa_B")}
    torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)
    assert model.blocks[1]["v_proj"].bias is None


def test_apply_sorsa_bad_targets() -> None:
    with pytest.raises(SpectraError, match=r"\['k_proj'\] match no module.*o_proj, q_proj"):
        apply_sorsa(Toy(), ["k_proj"], rank=4)
    with pytest.raises(SpectraError, match="match no module"):
        apply_sorsa(Toy(), ["blocks.0"], rank=4)
    toy = Toy()
    toy.blocks[0]["q_proj"] = Conv1D(24, 16)
    with pytest.raises(SpectraError, match=r"Conv1D, SORSA needs nn\.Linear"):
        apply_sorsa(toy, ["blocks.0.q_proj"], rank=4)
    with pytest.raises(SpectraError, match="rank 17"):
        apply_sorsa(Toy(), ["q_proj"], rank=17)


def test_apply_sorsa_takes_targets_by_capture_rule() -> None:
    model = Toy()
    assert apply_sorsa(model, ["*.0.q_proj", "1.v_proj"], rank=4) == [
        "blocks.0.q_proj", "blocks.1.v_proj"
    ]  # fmt: skip
    assert list(sorsa_modules(model)) == ["blocks.0.q_proj", "blocks.1.v_proj"]


def test_save_load_round_trip(tmp_path) -> None:
    model = Toy()
    apply_sorsa(model, ["q_proj", "v_proj"], rank=4)
    _perturb(model)
    x = torch.randn(3, 16)
    y = model(x)
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    fresh = Toy()
    assert load_adapter(fresh, path) == list(sorsa_modules(model))
    torch.testing.assert_close(fresh(x), y, rtol=1e-5, atol=1e-5)


def test_load_rejects_bad_files(tmp_path) -> None:
    with pytest.raises(SpectraError, match="no such adapter"):
        load_adapter(Toy(), tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(SpectraError, match="not a spectra SORSA adapter"):
        load_adapter(Toy(), tmp_path / "plain.safetensors")
    model = Toy()
    apply_sorsa(model, ["q_proj"], rank=4)
    path = save_adapter(model, tmp_path / "a.safetensors")
    other = Toy()
    apply_sorsa(other, ["q_proj"], rank=3)
    with pytest.raises(SpectraError, match="expected shape"):
        load_adapter(other, path)


def _eq4_by_singular_values(m: SORSALinear) -> torch.Tensor:
    """‖XᵀX − I‖_F = sqrt(Σ (s_i² − 1)²) over X's singular values: an independent form of eq. 4."""
    total = 0
    for x in (m.sorsa_A.T, m.sorsa_B):
        s = torch.linalg.svdvals(x)
        total = total + torch.sqrt(((s**2 - 1) ** 2).sum())
    return total


def test_regularizer_is_zero_at_init_and_averages_factors() -> None:
    model = Toy()
    apply_sorsa(model, ["q_proj", "v_proj"], rank=4)
    modules = list(sorsa_modules(model).values())
    assert regularizer(modules).item() < 1e-5
    _perturb(model)
    expected = sum(_eq4_by_singular_values(m) for m in modules) / (2 * len(modules))
    torch.testing.assert_close(regularizer(modules), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("gamma,peak_lr", [(5e-4, 3e-5), (4e-4, 1e-3)])
def test_regularizer_gradient_and_eq6_scaling(gamma: float, peak_lr: float) -> None:
    model = Toy().double()
    apply_sorsa(model, ["q_proj", "v_proj"], rank=4)
    _perturb(model)
    modules = list(sorsa_modules(model).values())
    factors = [p for m in modules for p in (m.sorsa_A, m.sorsa_S, m.sorsa_B)]
    expected_loss = sum(_eq4_by_singular_values(m) for m in modules) / (2 * len(modules))
    expected = torch.autograd.grad(expected_loss, factors, allow_unused=True)
    value = regularizer_backward(modules, gamma, peak_lr)
    assert value == pytest.approx(expected_loss.item(), rel=1e-10)
    for p, g in zip(factors, expected, strict=True):
        if g is None:  # S_p is not regularized
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, g * (gamma / peak_lr), rtol=1e-9, atol=1e-12)


def test_regularizer_gamma_zero_only_measures() -> None:
    model = Toy()
    apply_sorsa(model, ["q_proj"], rank=4)
    _perturb(model)
    modules = list(sorsa_modules(model).values())
    assert regularizer_backward(modules, 0.0, 1e-3) > 0
    assert all(m.sorsa_A.grad is None for m in modules)
    with pytest.raises(SpectraError, match="no SORSA adapters"):
        regularizer([])
