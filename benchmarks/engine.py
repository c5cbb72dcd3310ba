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

The last table gives the extra cost of the update columns (delta_m, delta_dir,
amplification, intruder_overlap) over the engine as it was (SVD of W_t and every metric
above, plus κ(W_p) for a low-rank layer), per matrix, for

- ``lora``: W_t = W_0 + B A with r = 16 (LoRA-like; ΔW is decomposed through its factors);
- ``ft``:   the realistic pair above (FT-like; ΔW is full-rank and takes a full SVD),

and, for ``ft``, what the alternatives to that full SVD would cost and how far their
amplification is from it: the top 2r eigenvectors of ΔWᵀΔW refined by one Rayleigh–Ritz
step (``gram``), and PROPACK's Lanczos bidiagonalization (``propack``, scipy). Reading W_0
from the run directory (the engine does, once per row) is not included.
Figures go to stdout and benchmarks/results/engine.json.

    python benchmarks/engine.py [--sizes 1024 2048 4096] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from spectra.factors import Principal, product, update_factors
from spectra.metrics import (
    amplification_from_svd,
    drift_from_svd,
    factor_metrics,
    factored_svd,
    fixed_by_certificate,
    magnitude_direction,
    svd,
    top_overlaps,
    vector_drift,
)

RANK = 16  # adapter rank of the LoRA-like pair, r of the FT-like one (the engine's ft_rank)


def best_time(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls (the least disturbed by other work)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


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


def lora_pair(w0: torch.Tensor, r: int = RANK, seed: int = 1) -> tuple[Principal, Principal]:
    """W_p at step 0 (B = 0, A random, as LoRA starts) and after training (both moved)."""
    g = torch.Generator().manual_seed(seed)
    n, m = w0.shape[1], w0.shape[0]
    a0 = torch.randn(r, n, generator=g, dtype=torch.float64) / n**0.5
    b = 0.05 * torch.randn(m, r, generator=g, dtype=torch.float64) / r**0.5
    a = a0 + 0.01 * torch.randn(r, n, generator=g, dtype=torch.float64) / n**0.5
    return Principal(torch.zeros(m, r, dtype=torch.float64), None, a0), Principal(b, None, a)


def gram_svd(delta: torch.Tensor, r: int):
    """Top-r singular triplets of ΔW from the top 2r eigenvectors of ΔWᵀΔW and one
    Rayleigh–Ritz step on ΔW itself (the alternative measured, not used)."""
    import scipy.linalg

    n = delta.shape[1]
    q = min(2 * r, n)
    _, v = scipy.linalg.eigh((delta.mT @ delta).numpy(), subset_by_index=[n - q, n - 1])
    basis, _ = torch.linalg.qr(delta @ torch.from_numpy(v[:, ::-1].copy()))
    x, s, vh = torch.linalg.svd(basis.mT @ delta, full_matrices=False)
    return basis @ x, s, vh


def propack_svd(delta: torch.Tensor, r: int):
    """Top r + 1 singular triplets of ΔW by PROPACK (the alternative measured, not used)."""
    from scipy.sparse.linalg import svds

    u, s, vh = svds(delta.numpy(), k=r + 1, solver="propack", random_state=0)
    order = s.argsort()[::-1].copy()
    return (torch.from_numpy(x.copy()) for x in (u[:, order], s[order], vh[order]))


def amplification_of(w0: torch.Tensor, delta: torch.Tensor, triplets, r: int) -> float:
    """‖ΔW‖_F / ‖U_rᵀ W_0 V_r‖_F from (possibly partial) top singular triplets."""
    u, _, vh = triplets
    return float(
        torch.linalg.matrix_norm(delta) / torch.linalg.matrix_norm(u[:, :r].mT @ w0 @ vh[:r].mT)
    )


def engine_before(base, wt, cur, principal: Principal | None) -> None:
    """The row of the engine as it was: SVD of W_t, every metric, κ(W_p) of a low-rank layer."""
    svd(wt)
    drift_from_svd(base, wt, cur)
    if principal is not None:
        factor_metrics(principal.left, principal.right)


def update_columns(w0, base, wt, cur, low_rank: tuple | None) -> None:
    """What the update columns add: ΔW's SVD (through its factors when low-rank) and the rest."""
    magnitude_direction(w0, wt)
    top_overlaps(base, cur)
    delta = factored_svd(*low_rank) if low_rank is not None else svd(wt - w0)
    amplification_from_svd(w0, delta, RANK)


def measure_update(n: int, repeats: int) -> dict:
    """Seconds per matrix of the engine as it was and of the update columns on top of it."""
    w0, ft = realistic_pair(n)
    base = svd(w0)
    p0, pt = lora_pair(w0)
    lora = w0 + product(pt)
    out = {"n": n}
    for kind, wt, principal in (("lora", lora, pt), ("ft", ft, None)):
        cur = svd(wt)
        low_rank = update_factors(p0, pt) if principal is not None else None
        run = (
            lambda wt=wt, cur=cur, principal=principal: engine_before(base, wt, cur, principal),
            lambda wt=wt, cur=cur, low_rank=low_rank: update_columns(w0, base, wt, cur, low_rank),
        )
        times = {"before": best_time(run[0], repeats), "columns": best_time(run[1], repeats)}
        out[kind] = times | {"extra": times["columns"] / times["before"]}
    delta = ft - w0
    exact = amplification_from_svd(w0, svd(delta), RANK)
    for name, method in (("gram", gram_svd), ("propack", propack_svd)):
        seconds = best_time(lambda m=method: m(delta, RANK), repeats)
        error = abs(amplification_of(w0, delta, method(delta, RANK), RANK) - exact) / exact
        out["ft"][name] = {"seconds": seconds, "relative_error": error}
    out["ft"]["svd_delta"] = best_time(lambda: svd(delta), repeats)
    return out


def update_report(results: list[dict]) -> Table:
    table = Table(title=f"update columns per matrix, {torch.get_num_threads()} threads")
    columns = ("n", "pair", "engine before s", "+ columns s", "extra",
               "ΔW: full SVD s", "gram s (err)", "propack s (err)")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="right")
    for r in results:
        for kind in ("lora", "ft"):
            t = r[kind]
            alternatives = ["", "", ""]
            if kind == "ft":
                alternatives = [f"{t['svd_delta']:.2f}"] + [
                    f"{t[a]['seconds']:.2f} ({t[a]['relative_error']:.0e})"
                    for a in ("gram", "propack")
                ]
            table.add_row(
                str(r["n"]), kind, f"{t['before']:.2f}", f"{t['columns']:.3f}",
                f"{100 * t['extra']:.1f}%", *alternatives,
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
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "engine.json"
    )
    args = parser.parse_args()
    console = Console(width=160)
    results, updates = [], []
    for n in args.sizes:
        console.log(f"n = {n}")
        results.append(measure(n, args.repeats))
        updates.append(measure_update(n, args.repeats))
    console.print(report(results))
    console.print(matched_report(results))
    console.print(update_report(updates))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    document = {"meta": meta, "results": results, "update_columns": updates}
    args.out.write_text(json.dumps(document, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
