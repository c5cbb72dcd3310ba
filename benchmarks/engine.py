"""Per-matrix cost of the float64 drift engine, side by side with its floor and the paper's path.

For each size n (square n×n), in one run:

- ``svd64``      bare ``torch.linalg.svd`` in float64: the LAPACK floor;
- ``engine_idx`` the engine per later step (SVD of W_t, every metric, index-matched ΔD only);
- ``engine``     the full engine (also the sign-invariant matched ΔD);
- ``paper32``    the paper notebook's path: a float32 SVD of W_t and index-matched ΔΣ/ΔD.

The cost that matched ΔD adds over index ΔD is timed on its own (the SVDs are shared), with
the certificate that settles indices without the assignment and without it (the whole k×k
overlap and assignment, as before the certificate), on the FT-like pair above and on a
SORSA-like small drift: W_t keeps W_0's residual and moves its top-128 singular triplets
slightly, as SORSA training does.

The base SVD is cached (computed once per run), so none of these pays for it. The script
also prints the error of the float32 path against float64 (max |Δ| of ΔΣ and ΔD) on a
realistic fine-tuning perturbation, and the engine's ratio to the GEMM bound: 22·n³ flops
at the DGEMM rate measured here.

The last table gives the cost of the update columns (delta_m, delta_dir, amplification,
dw_rank90, dw_eff_rank, principal_energy, principal_angle, update_sparsity) per matrix, at
``--update-sizes`` (2048 and 4096), through the engine's own functions on a run directory
written for the purpose: the row is ``matrix_task`` (reading the snapshot, SVD of W_t,
every column), the update columns alone are ``update_metrics``, once as the engine computes
them now and once with ``certified=False``, the full SVD of ΔW that the engine took before
(its baseline). "rest" is the row without its update columns. Pairs:

- ``lora``: W_t = W_0 + B A with r = 16 (LoRA-like; ΔW through its factors);
- ``ft``: the realistic pair above (FT-like: a rank-32 update whose top singular values are
  packed together, σ_16 − σ_17 ≈ 1e-4·σ_1, plus dense noise);
- ``ft-powerlaw``: W_0 as above, ΔW with singular values 0.1/i and random singular vectors
  (an FT-like update with a decaying spectrum).

For the dense pairs it also reports how long the two parts of the certified route take on
their own: ΔW's singular values alone (``torch.linalg.svdvals``) and the top-r path
(``certified_amplification``, falling back to the full SVD where it cannot certify), and
whether it certified.
Figures go to stdout and benchmarks/results/engine.json. ``--clock cpu`` times the process's
CPU time instead of the wall clock: on a machine shared with other work, with one thread
(``OMP_NUM_THREADS=1``, as the engine's workers run on a machine with as many cores as workers)
it is the wall time the same machine would show idle, where the wall clock counts the others'
time slices too.

    python benchmarks/engine.py [--sizes 1024 2048 4096] [--update-sizes 2048 4096] [--repeats 2]
        [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from spectra.certified import certified_amplification
from spectra.engine import Settings, base_task, matrix_task, update_metrics
from spectra.engine.svd_cache import load_base, open_cache
from spectra.metrics import drift_from_svd, fixed_by_certificate, svd, vector_drift
from spectra.snapshots import Manifest, RunWriter, Target, open_run

RANK = 16  # adapter rank of the LoRA-like pair, r of the FT-like one (the engine's ft_rank)
SETTINGS = Settings(ft_rank=RANK)  # the engine's own settings, r = RANK
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]  # --clock


def timed(fn, repeats: int) -> tuple[float, object]:
    """Best time (``clock``) of ``repeats`` calls (the least disturbed by other work), and the
    last call's result."""
    times = []
    for _ in range(repeats):
        start = clock()
        result = fn()
        times.append(clock() - start)
    return min(times), result


def best_time(fn, repeats: int) -> float:
    """Best time (``clock``) of ``repeats`` calls."""
    return timed(fn, repeats)[0]


def realistic_pair(n: int, eps: float = 0.01, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A pre-trained-like W_0 and W_t after a fine-tuning-like update.

    W_0 is a random bulk (Marchenko–Pastur spectrum) plus 8 strong spikes; W_t adds a
    rank-32 update and dense noise of relative size ``eps``, which gives ΔD of order 0.1,
    the range the paper reports for FT and LoRA.
    """
    g = torch.Generator().manual_seed(seed)

    def gauss(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    w0 = gauss(n, n) / n**0.5 + 0.5 * gauss(n, 8) @ gauss(8, n) / n**0.5
    wt = w0 + 10 * eps * gauss(n, 32) @ gauss(32, n) / n + eps * gauss(n, n) / n**0.5
    return w0, wt


def sorsa_like_pair(n: int, r: int = 128, eps: float = 0.01, seed: int = 0):
    """W_0 as in ``realistic_pair``; W_t = W_r + U_p' diag(S_p') V_p'ᵀ with the top-r triplets
    perturbed by ``eps`` (relative), the residual W_r untouched."""
    w0, _ = realistic_pair(n, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)

    def gauss(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    u, s, vh = torch.linalg.svd(w0, full_matrices=False)
    u_p = u[:, :r] + eps * gauss(n, r) / n**0.5
    v_p = vh[:r] + eps * gauss(r, n) / n**0.5
    s_p = s[:r] * (1 + eps * gauss(r))
    return w0, w0 - (u[:, :r] * s[:r]) @ vh[:r] + (u_p * s_p) @ v_p


def matched_cost(w0: torch.Tensor, wt: torch.Tensor, repeats: int) -> dict:
    """Seconds of ΔD index-only, matched with the certificate, matched without it."""
    base, cur = svd(w0), svd(wt)
    a = (cur.u * base.u).sum(0).abs()
    b = (cur.vh * base.vh).sum(1).abs()
    return {
        "index": best_time(lambda: vector_drift(base, cur, matched=False), repeats),
        "certificate": best_time(lambda: vector_drift(base, cur), repeats),
        "full": best_time(lambda: vector_drift(base, cur, certificate=False), repeats),
        "certified": int(fixed_by_certificate(a, b).sum()),
        "k": int(base.s.numel()),
    }


def paper_float32(base32, wt: torch.Tensor) -> tuple[float, float]:
    """The paper notebook's metrics: float32 SVD, index-matched ΔD."""
    u, s, vh = torch.linalg.svd(wt.float(), full_matrices=False)
    u0, s0, vh0 = base32
    k = s.numel()
    delta_sigma = float((s - s0).abs().mean())
    overlap = (u * u0).sum(0).abs().sum() + (vh * vh0).sum(1).abs().sum()
    return delta_sigma, float(1 - overlap / (2 * k))


def dgemm_rate(n: int, repeats: int) -> float:
    """Measured float64 GEMM rate at size n in flop/s."""
    a = torch.randn(n, n, dtype=torch.float64)
    b = torch.randn(n, n, dtype=torch.float64)
    return 2 * n**3 / best_time(lambda: a @ b, max(repeats, 3))


def measure(n: int, repeats: int) -> dict:
    w0, wt = realistic_pair(n)
    base = svd(w0)
    base32 = torch.linalg.svd(w0.float(), full_matrices=False)
    times = {
        "svd64": best_time(lambda: torch.linalg.svd(wt, full_matrices=False), repeats),
        "engine_idx": best_time(lambda: drift_from_svd(base, wt, matched=False), repeats),
        "engine": best_time(lambda: drift_from_svd(base, wt), repeats),
        "paper32": best_time(lambda: paper_float32(base32, wt), repeats),
    }
    matched = {
        "ft_like": matched_cost(w0, wt, repeats),
        "sorsa_like": matched_cost(*sorsa_like_pair(n), repeats),
    }
    for m in matched.values():  # what matched ΔD adds to the engine's per-matrix time
        m["extra_certificate"] = (m["certificate"] - m["index"]) / times["engine_idx"]
        m["extra_full"] = (m["full"] - m["index"]) / times["engine_idx"]
    exact = drift_from_svd(base, wt)
    sigma32, d32 = paper_float32(base32, wt)
    rate = dgemm_rate(n, repeats)
    return {
        "n": n,
        "seconds": times,
        "engine_idx_over_svd64": times["engine_idx"] / times["svd64"],
        "matched_extra": times["engine"] / times["engine_idx"] - 1,
        "matched": matched,
        "dgemm_gflops": rate / 1e9,
        "gemm_bound_s": 22 * n**3 / rate,
        "engine_over_gemm_bound": times["engine"] / (22 * n**3 / rate),
        "float64": {k: exact[k] for k in ("delta_sigma", "delta_d", "delta_d_matched")},
        "float32_abs_error": {
            "delta_sigma": abs(sigma32 - exact["delta_sigma"]),
            "delta_d": abs(d32 - exact["delta_d"]),
        },
    }


def powerlaw_pair(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """W_0 of ``realistic_pair``; ΔW with singular values 0.1/i and random singular vectors."""
    w0, _ = realistic_pair(n, seed=seed)
    g = torch.Generator().manual_seed(seed + 2)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    s = 0.1 / torch.arange(1, n + 1, dtype=torch.float64)
    return w0, w0 + (u * s) @ v.mT


def write_pairs(root: Path, n: int) -> Path:
    """A run directory with one layer per pair: step 0 and step 1 of each."""
    w0, ft = realistic_pair(n)
    _, powerlaw = powerlaw_pair(n)
    g = torch.Generator().manual_seed(1)
    a0 = torch.randn(RANK, n, generator=g, dtype=torch.float64) / n**0.5
    b = 0.05 * torch.randn(n, RANK, generator=g, dtype=torch.float64) / RANK**0.5
    a = a0 + 0.01 * torch.randn(RANK, n, generator=g, dtype=torch.float64) / n**0.5
    targets = {"ft": Target("dense", (n, n)), "ft-powerlaw": Target("dense", (n, n)),
               "lora": Target("lowrank", (n, n), RANK)}  # fmt: skip
    writer = RunWriter(root / "pairs", Manifest(run="pairs", method="mixed", targets=targets))
    writer.write_frozen({"lora": {"base": w0}})
    one = torch.ones(1, dtype=torch.float64)
    lora = {0: {"left": torch.zeros(n, RANK, dtype=torch.float64), "right": a0, "scale": one},
            1: {"left": b, "right": a, "scale": one}}  # fmt: skip
    for step, (wt, wp) in enumerate(((w0, w0.clone()), (ft, powerlaw))):
        writer.write_step(step, {"ft": {"weight": wt}, "ft-powerlaw": {"weight": wp},
                                 "lora": lora[step]})  # fmt: skip
    writer.finish()
    return root / "pairs"


def measure_update(n: int, repeats: int) -> dict:
    """Seconds per matrix of the engine's row and of its update columns, now and before."""
    out = {"n": n}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = str(write_pairs(Path(tmp), n))
        run = open_run(run_dir)
        cache = open_cache(tmp)
        for layer in ("lora", "ft", "ft-powerlaw"):
            base_file = base_task(run_dir, layer, cache)
            base = load_base(base_file, run_dir, layer)
            w, factors = run.weight_and_principal(1, layer)
            cur = svd(w)
            columns = partial(update_metrics, run, 1, layer, w, factors, base, cur, SETTINGS)
            row = best_time(lambda layer=layer, f=base_file: matrix_task(
                run_dir, 1, layer, f, SETTINGS), repeats)  # fmt: skip
            now_s, now = timed(lambda c=columns: c(certified=True), repeats)
            before_s, before = timed(lambda c=columns: c(certified=False), repeats)
            rest = row - now_s
            entry = {"row": row, "now": now_s, "before": before_s, "rest": rest,
                     "extra_now": now_s / rest, "extra_before": before_s / rest}  # fmt: skip
            if layer != "lora":  # what the certified route spends: ΔW's values, the top-r path
                w0 = run.weight(0, layer)
                delta = w - w0
                entry["svdvals"], s = timed(lambda d=delta: torch.linalg.svdvals(d), repeats)
                entry["truncated"], found = timed(
                    lambda w0=w0, d=delta, s=s: certified_amplification(w0, d, s, RANK), repeats
                )
                entry |= {"certified": found.truncated, "bound": found.bound,
                          "gap": float((s[RANK - 1] - s[RANK]) / s[0])}  # fmt: skip
                entry["amplification_difference"] = (
                    abs(now["amplification"] - before["amplification"]) / before["amplification"]
                )
            out[layer] = entry
    return out


def update_report(results: list[dict]) -> Table:
    table = Table(
        title=f"update columns per matrix (engine functions), {torch.get_num_threads()} threads, "
        f"{clock.__name__}"
    )
    columns = ("n", "pair", "row s", "rest s", "before: full SVD of ΔW", "now",
               "ΔW svdvals s", "top-r s", "certified (bound, σ-gap/σ₁)",
               "|Δ amplification|")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="right")
    for r in results:
        for pair in ("lora", "ft", "ft-powerlaw"):
            t = r[pair]
            dense = ["", "", "", ""]
            if "svdvals" in t:
                dense = [f"{t['svdvals']:.2f}", f"{t['truncated']:.2f}",
                         f"{'yes' if t['certified'] else 'no'} ({t['bound']:.0e}, {t['gap']:.0e})",
                         f"{t['amplification_difference']:.0e}"]  # fmt: skip
            table.add_row(
                str(r["n"]), pair, f"{t['row']:.2f}", f"{t['rest']:.2f}",
                f"{t['before']:.2f} s (+{100 * t['extra_before']:.1f}%)",
                f"{t['now']:.2f} s (+{100 * t['extra_now']:.1f}%)", *dense,
            )  # fmt: skip
    return table


def report(results: list[dict]) -> Table:
    table = Table(title=f"drift engine per matrix, {torch.get_num_threads()} threads")
    columns = (
        "n",
        "svd64 s",
        "engine idx s",
        "engine s",
        "paper f32 s",
        "idx/svd64",
        "matched +",
        "engine/GEMM bound",
        "f32 |ΔΣ err|",
        "f32 |ΔD err|",
        "ΔD f64",
    )
    for col in columns:
        table.add_column(col, justify="right")
    for r in results:
        t = r["seconds"]
        table.add_row(
            str(r["n"]), f"{t['svd64']:.2f}", f"{t['engine_idx']:.2f}", f"{t['engine']:.2f}",
            f"{t['paper32']:.2f}", f"{r['engine_idx_over_svd64']:.3f}×",
            f"{100 * r['matched_extra']:.1f}%", f"{r['engine_over_gemm_bound']:.1f}×",
            f"{r['float32_abs_error']['delta_sigma']:.1e}",
            f"{r['float32_abs_error']['delta_d']:.1e}", f"{r['float64']['delta_d']:.4f}",
        )  # fmt: skip
    return table


def matched_report(results: list[dict]) -> Table:
    table = Table(title="what matched ΔD adds to the engine, with and without the certificate")
    for col in ("n", "pair", "certified", "certificate", "full assignment"):
        table.add_column(col, justify="right")
    for r in results:
        for pair, m in r["matched"].items():
            table.add_row(
                str(r["n"]), pair, f"{m['certified']}/{m['k']}",
                f"+{100 * m['extra_certificate']:.1f}%", f"+{100 * m['extra_full']:.1f}%",
            )  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1024, 2048, 4096])
    parser.add_argument("--update-sizes", type=int, nargs="*", default=[2048, 4096])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "engine.json"
    )
    parser.add_argument("--clock", choices=CLOCKS, default="wall")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    console = Console(width=160)
    results, updates = [], []
    for n in args.sizes:
        console.log(f"n = {n}")
        results.append(measure(n, args.repeats))
    for n in args.update_sizes:
        console.log(f"update columns, n = {n}")
        updates.append(measure_update(n, args.repeats))
        console.print(update_report(updates[-1:]))  # each size as soon as it is measured
    if results:
        console.print(report(results))
        console.print(matched_report(results))
    if updates:
        console.print(update_report(updates))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "torch": torch.__version__,
    }
    document = {"meta": meta, "results": results, "update_columns": updates}
    args.out.write_text(json.dumps(document, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
