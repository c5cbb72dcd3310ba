"""The float64 engine per matrix on the CPU and on a CUDA GPU (``compute --device cuda``).

For each size n (square n×n, the FT-like pair of ``engine.py``): a bare float64 SVD and the
engine's per-step work (SVD of W_t and every metric against a cached base SVD) on the CPU
(LAPACK gesdd) and on the GPU (cuSOLVER gesvd, as ``spectra.metrics.svd`` runs it), and the
largest difference between the two in any metric. Figures go to stdout and
benchmarks/results/device.json.

    python benchmarks/device.py [--sizes 1024 2048 4096] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from engine import best_time, realistic_pair
from rich.console import Console
from rich.table import Table

from spectra.metrics import drift_from_svd, svd


def measure(n: int, repeats: int) -> dict:
    w0, wt = realistic_pair(n)
    base = svd(w0)
    cuda = lambda: torch.cuda.synchronize()  # noqa: E731
    times = {
        "svd_cpu": best_time(lambda: svd(wt), repeats),
        "svd_cuda": best_time(lambda: (svd(wt, "cuda"), cuda()), repeats),
        "engine_cpu": best_time(lambda: drift_from_svd(base, wt, svd(wt)), repeats),
        "engine_cuda": best_time(lambda: drift_from_svd(base, wt, svd(wt, "cuda")), repeats),
    }
    cpu = drift_from_svd(base, wt, svd(wt))
    gpu = drift_from_svd(svd(w0, "cuda"), wt, svd(wt, "cuda"))
    error = max(abs(gpu[k] - v) / max(1.0, abs(v)) for k, v in cpu.items())
    return {"n": n, "seconds": times, "max_metric_difference": error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "device.json"
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU on this machine")
    results = [measure(n, args.repeats) for n in args.sizes]
    gpu = torch.cuda.get_device_name()
    table = Table(
        title=f"float64 engine per matrix: {torch.get_num_threads()} CPU threads vs {gpu}"
    )
    for col in ("n", "SVD cpu s", "SVD cuda s", "engine cpu s", "engine cuda s", "speed-up",
                "max |Δ metric|"):  # fmt: skip
        table.add_column(col, justify="right")
    for r in results:
        t = r["seconds"]
        table.add_row(
            str(r["n"]), f"{t['svd_cpu']:.2f}", f"{t['svd_cuda']:.2f}", f"{t['engine_cpu']:.2f}",
            f"{t['engine_cuda']:.2f}", f"{t['engine_cpu'] / t['engine_cuda']:.1f}×",
            f"{r['max_metric_difference']:.1e}",
        )  # fmt: skip
    Console(width=140).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__}  # fmt: skip
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
