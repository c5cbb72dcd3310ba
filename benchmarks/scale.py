"""Engine throughput and peak memory: 1 and 2 local workers and a Dask cluster, side by side.

Builds one dense run (default 16 layers × 3 steps of 2048×2048 float32) and computes it
from scratch (fresh SVD cache) once per configuration, each in its own subprocess so that
peak RSS is measured per configuration: the largest of the main process and its workers.
A second, smaller run (4 layers) with one worker shows that peak memory does not grow with
the number of matrices. Figures go to stdout and benchmarks/results/scale.json.

    python benchmarks/scale.py [--size 2048] [--layers 16] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

CONFIGS = ("local-1", "local-2", "dask-2")


def make_run(path: Path, layers: int, steps: int, size: int) -> Path:
    """A dense FT-like run of ``layers`` matrices at ``steps`` steps."""
    from spectra.snapshots import Manifest, RunWriter, Target

    g = torch.Generator().manual_seed(0)
    names = [f"model.layers.{i}.self_attn.q_proj" for i in range(layers)]
    w0 = {n: torch.randn(size, size, generator=g) / size**0.5 for n in names}
    targets = {n: Target("dense", (size, size)) for n in names}
    writer = RunWriter(path, Manifest(run=path.name, method="ft", targets=targets))
    for step in range(steps):
        noise = {n: 0.01 * step * torch.randn(size, size, generator=g) / size**0.5 for n in names}
        writer.write_step(step, {n: {"weight": w0[n] + noise[n]} for n in names})
    writer.finish()
    return path


def peak_rss_kib() -> int:
    """This process's own peak RSS (VmHWM; ru_maxrss would carry the parent's over exec)."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))


def run_one(config: str, run_dir: Path, cache: Path) -> dict:
    """Compute ``run_dir`` under ``config``; wall time, matrices/s and peak RSS in MiB."""
    from spectra.engine import Engine

    out = run_dir.with_suffix(f".{config}.parquet")
    start = time.perf_counter()
    if config.startswith("dask"):
        from distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
        )
        with cluster, Client(cluster) as client:
            rows = Engine(run_dir, out, cache_dir=cache, executor=client.get_executor()).update()
    else:
        rows = Engine(run_dir, out, cache_dir=cache, workers=int(config[-1])).update()
    seconds = time.perf_counter() - start
    own = peak_rss_kib()
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "config": config,
        "matrices": rows,
        "seconds": seconds,
        "matrices_per_s": rows / seconds,
        "peak_rss_main_mib": own / 1024,
        "peak_rss_worker_mib": workers / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results/scale.json")
    parser.add_argument(
        "--one", nargs=3, metavar=("CONFIG", "RUN", "CACHE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.one:  # a child process measuring one configuration
        config, run_dir, cache = args.one
        print(json.dumps(run_one(config, Path(run_dir), Path(cache))))
        return
    console = Console(width=140)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        big = make_run(tmp / "big", args.layers, args.steps, args.size)
        small = make_run(tmp / "small", max(1, args.layers // 4), args.steps, args.size)
        jobs = [(c, big) for c in CONFIGS] + [("local-1", small)]
        for config, run_dir in jobs:
            console.log(f"{config} on {run_dir.name}")
            cache = tempfile.mkdtemp(dir=tmp)  # every configuration pays for its base SVDs
            child = [sys.executable, __file__, "--one", config, str(run_dir), cache]
            done = subprocess.run(child, capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(result | {"run": run_dir.name})
    table = Table(title=f"engine at {args.size}², {args.steps} steps, float64 SVD on the CPU")
    for col in ("config", "matrices", "seconds", "matrices/s", "peak RSS main MiB",
                "peak RSS worker MiB"):  # fmt: skip
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            r["config"], str(r["matrices"]), f"{r['seconds']:.1f}", f"{r['matrices_per_s']:.3f}",
            f"{r['peak_rss_main_mib']:.0f}", f"{r['peak_rss_worker_mib']:.0f}",
        )  # fmt: skip
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"size": args.size, "results": results}, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
