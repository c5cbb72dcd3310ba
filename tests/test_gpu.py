"""The GPU path: float64 SVDs on CUDA agree with the CPU's (skipped without a CUDA GPU)."""

import pytest
import torch

from spectra.metrics import drift_from_svd, svd


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_float64_agrees_with_cpu():
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(512, 384, generator=g, dtype=torch.float64)
    wt = w0 + 0.05 * torch.randn(512, 384, generator=g, dtype=torch.float64)
    base_cpu, base_gpu = svd(w0), svd(w0, "cuda")
    cpu = drift_from_svd(base_cpu, wt, svd(wt))
    gpu = drift_from_svd(base_gpu, wt, svd(wt, "cuda"))
    for key, value in cpu.items():
        assert gpu[key] == pytest.approx(value, rel=1e-10, abs=1e-10), key
