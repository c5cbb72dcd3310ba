"""The paper's Figure 4 on this machine: SORSA forward by eq. 3 vs eq. 15, over matrix sizes.

For each square n×n layer with rank r (the paper's 128, at most n/2), side by side in one run:

- ``us_eq3`` / ``us_eq15``   the step that differs: U_p diag(S_p) (a matmul, O(m·r²)) vs
  U_p ⊙ S_p (a column scaling, O(m·r));
- ``wp_eq3`` / ``wp_eq15``   forming W_p: U_p diag(S_p) V_pᵀ (two matmuls) vs (U_p ⊙ S_p) V_pᵀ;
- ``fwd_eq3`` / ``fwd_eq15`` the whole adapter forward x (W_r + W_p)ᵀ on ``tokens`` inputs
  (``SORSALinear.forward`` is the eq. 15 one).

Times are medians of ``torch.utils.benchmark`` blocked runs, float32 on the CPU; the two
forms are timed alternately for ``--rounds`` rounds and the best median of each is kept, so
that other work on a shared machine disturbs both alike.  Figures go
to stdout and benchmarks/results/sorsa_forward.json.

    python benchmarks/sorsa_forward.py [--sizes 256 512 1024 2048 4096] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch.utils.benchmark import Timer

from spectra.sorsa import principal_eq3, principal_eq15

COLUMNS = ("us_eq3", "us_eq15", "wp_eq3", "wp_eq15", "fwd_eq3", "fwd_eq15")


def median_time(stmt, min_run_time: float) -> float:
    """Median seconds per call of ``stmt`` (a zero-argument callable)."""
    return (
        Timer("stmt()", globals={"stmt": stmt}).blocked_autorange(min_run_time=min_run_time).median
    )


def measure(n: int, rank: int, tokens: int, min_run_time: float, rounds: int) -> dict:
    """All timings for one n×n layer."""
    torch.manual_seed(0)
    w_r, x = torch.randn(n, n) / n**0.5, torch.randn(tokens, n)
    b, s, a = torch.linalg.qr(torch.randn(n, rank))[0], torch.rand(rank), torch.randn(rank, n)
    with torch.no_grad():
        fns = {
            "us_eq3": lambda: b @ torch.diag(s),
            "us_eq15": lambda: b * s,
            "wp_eq3": lambda: principal_eq3(b, s, a),
            "wp_eq15": lambda: principal_eq15(b, s, a),
            "fwd_eq3": lambda: F.linear(x, w_r + principal_eq3(b, s, a)),
            "fwd_eq15": lambda: F.linear(x, w_r + principal_eq15(b, s, a)),
        }
        times = {k: float("inf") for k in fns}
        for _ in range(rounds):
            for k, fn in fns.items():
                times[k] = min(times[k], median_time(fn, min_run_time))
    return {"n": n, "rank": rank, "tokens": tokens, **times}


def report(results: list[dict]) -> Table:
    table = Table(title="SORSA forward, eq. 3 vs eq. 15 (ms, median)")
    for name in ("n", "r", *COLUMNS, "U⊙S speed-up", "W_p speed-up", "forward speed-up"):
        table.add_column(name, justify="right")
    for r in results:
        table.add_row(
            str(r["n"]), str(r["rank"]), *(f"{r[c] * 1e3:.3f}" for c in COLUMNS),
            *(f"{r[f'{k}_eq3'] / r[f'{k}_eq15']:.2f}×" for k in ("us", "wp", "fwd")),
        )  # fmt: skip
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--min-run-time", type=float, default=0.3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "sorsa_forward.json"
    )
    args = ap.parse_args()
    console = Console(width=140)
    results = []
    with console.status("timing") as status:
        for n in args.sizes:
            status.update(f"timing n = {n}")
            rank = min(args.rank, n // 2)
            results.append(measure(n, rank, args.tokens, args.min_run_time, args.rounds))
    console.print(report(results))
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "dtype": "float32",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
