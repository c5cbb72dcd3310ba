"""What checking an SVD cache entry costs, per read, next to the SVD the entry saves.

For each size n (square n×n W_0, an entry of u, s, vh in float64):

- ``svd64``    the float64 SVD of W_0: what a cache hit saves;
- ``read``     reading the entry as before it was checked (the file's bytes, then the tensors);
- ``checked``  :func:`~spectra.engine.svd_cache.read_entry`: the same read, plus the header
  checks and the SHA-256 digest of u, s and vh (what every task's :func:`load_base` pays);
- ``digest``   the digest alone;
- ``probe``    :func:`~spectra.engine.svd_cache.is_svd_of`: the random probes that the entry
  is an SVD of W_0 (what :func:`base_task` adds, once per layer);
- ``key``      the W_0 address (BLAKE2b of its bytes), paid before the checks existed too.

The page cache is warm (the entry was just written), as it is for every read but the first.
Figures go to stdout and benchmarks/results/svd_cache.json.

    python benchmarks/svd_cache.py [--sizes 1024 2048 4096] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from safetensors.torch import load

from spectra.engine.svd_cache import _write_entry, is_svd_of, read_entry, svd_digest, weight_key
from spectra.metrics import svd


def best_time(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls (the least disturbed by other work)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(n: int, repeats: int, folder: Path) -> dict:
    w0 = torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    start = time.perf_counter()
    base = svd(w0)
    svd_s = time.perf_counter() - start
    key = weight_key(w0)
    path = folder / f"{key}.safetensors"
    _write_entry(path, base, key, svd_digest(base))
    found = read_entry(path, key, (n, n))
    assert not isinstance(found, str), found
    return {
        "n": n,
        "entry_mb": path.stat().st_size / 2**20,
        "svd64_s": svd_s,
        "read_s": best_time(lambda: load(path.read_bytes()), repeats),
        "checked_s": best_time(lambda: read_entry(path, key, (n, n)), repeats),
        "digest_s": best_time(lambda: svd_digest(base), repeats),
        "probe_s": best_time(lambda: is_svd_of(base, w0), repeats),
        "key_s": best_time(lambda: weight_key(w0), repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "svd_cache.json"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(n, args.repeats, Path(tmp)) for n in args.sizes]
    table = Table(title=f"SVD cache checks per read, {torch.get_num_threads()} threads")
    for heading in ("n", "entry MB", "svd64 s", "read s", "checked s", "added", "digest s",
                    "probe s", "key s", "added / svd64"):  # fmt: skip
        table.add_column(heading, justify="right")
    for r in rows:
        added = r["checked_s"] - r["read_s"]
        r["added_s"], r["added_over_svd"] = added, (added + r["probe_s"]) / r["svd64_s"]
        table.add_row(
            str(r["n"]), f"{r['entry_mb']:.0f}", f"{r['svd64_s']:.2f}", f"{r['read_s']:.3f}",
            f"{r['checked_s']:.3f}", f"{added:.3f}", f"{r['digest_s']:.3f}",
            f"{r['probe_s']:.4f}", f"{r['key_s']:.3f}", f"{100 * r['added_over_svd']:.1f}%",
        )  # fmt: skip
    Console(width=140).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "threads": torch.get_num_threads()}
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
