"""Training step time with and without spectra tracking, and the bytes of one snapshot.

A LoRA (r=8, q/v) fine-tune of a tiny Llama (the shape of the embedded spectra/default/tiny-llama:
hidden 256, 4 blocks, vocab 2048) trains on random tokens with AdamW. In one process, in
interleaved rounds so that other jobs on the machine disturb every configuration alike, it
times the optimizer step of

- ``none``            no tracking;
- ``deferred``        Tracker(every=10, mode="deferred"): snapshots only;
- ``inline-process``  Tracker(every=10): metrics computed by a 1-thread worker process;
- ``inline-thread``   the same worker as a thread of the training process.

Set-up (step 0, frozen weights, starting the worker and its step-0 metrics) and the wait
for the last metrics at close() are one-off costs, reported apart from the per-step time;
``tracker ms/step`` is the time spent inside ``tracker.step`` itself (what the training
thread pays directly, free of the machine's noise). Training uses one torch thread by
default, so that on a 2-core machine the worker has a core of its own. The script also
writes one snapshot per method and reports its size against the full q/v matrices that the
paper's notebook saves per step, on this model and extrapolated to Llama-2-7B (r = 128).

    python benchmarks/tracking_overhead.py [--steps 60] [--rounds 5] [--threads 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from rich.console import Console
from rich.table import Table
from transformers import LlamaConfig, LlamaForCausalLM

import spectra
from spectra.run_files import FROZEN, step_file
from spectra.sorsa import apply_sorsa

TARGETS = ("q_proj", "v_proj")
EVERY = 10
CONFIGS = {
    "none": None,
    "deferred": {"mode": "deferred"},
    "inline-process": {"mode": "inline", "worker": "process"},
    "inline-thread": {"mode": "inline", "worker": "thread"},
}
RESULTS = Path(__file__).parent / "results" / "tracking_overhead.json"


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=2048, hidden_size=256, intermediate_size=672, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def lora_model(rank: int = 8):
    return get_peft_model(tiny_llama(), LoraConfig(r=rank, lora_alpha=16, target_modules=TARGETS))


class Loop:
    """A LoRA training loop whose steps can be timed under any tracker."""

    def __init__(self, batch: int, length: int):
        self.model = lora_model()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=1e-3)
        gen = torch.Generator().manual_seed(0)
        self.data = torch.randint(0, 2048, (8, batch, length), generator=gen)
        self.step_no = 0

    def step(self, tracker) -> tuple[float, float]:
        """One optimizer step with the tracker's share of it: (wall time, tracker time)."""
        start = time.perf_counter()
        x = self.data[self.step_no % len(self.data)]
        loss = self.model(input_ids=x, labels=x).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        self.step_no += 1
        tracked = time.perf_counter()
        if tracker is not None:
            tracker.step(self.step_no, loss=loss.detach())
        end = time.perf_counter()
        return end - start, end - tracked


def wait_for(path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear in {timeout} s")
        time.sleep(0.02)


def timed_run(loop: Loop, options: dict | None, steps: int, root: Path) -> dict:
    """Per-step times of ``steps`` steps under one configuration, plus its one-off costs."""
    start = time.perf_counter()
    tracker = None
    if options is not None:
        out = root / f"run{len(list(root.iterdir()))}"
        tracker = spectra.Tracker(loop.model, out, TARGETS, EVERY, poll=0.2, **options)
        if options["mode"] == "inline":
            wait_for(out.with_suffix(".parquet"))  # the worker is up and has done step 0
    setup = time.perf_counter() - start
    loop.step_no = 0  # steps numbered from 1 in every tracked run
    times, inside = zip(*(loop.step(tracker) for _ in range(steps)), strict=True)
    start = time.perf_counter()
    if tracker is not None:
        tracker.close()
    close = time.perf_counter() - start
    return {"times": times, "inside": inside, "setup_s": setup, "close_s": close}


def overhead(args, root: Path) -> dict:
    loop = Loop(args.batch, args.length)
    for _ in range(3):  # warm up the allocator and kernels
        loop.step(None)
    names = list(CONFIGS)
    runs = {name: [] for name in names}
    for i in range(args.rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:  # rotate the order
            runs[name].append(timed_run(loop, CONFIGS[name], args.steps, root))
    means = {name: [statistics.fmean(r["times"]) for r in rounds] for name, rounds in runs.items()}
    result = {}
    for name, rounds in runs.items():
        times = [t for r in rounds for t in r["times"]]
        ratios = [m / b for m, b in zip(means[name], means["none"], strict=True)]
        result[name] = {
            "mean_step_ms": 1e3 * statistics.fmean(times),
            "median_step_ms": 1e3 * statistics.median(times),
            # paired with the untracked run of the same round, so slow phases of other
            # jobs on the machine cancel out; the median over rounds drops outliers
            "overhead_pct": 100 * (statistics.median(ratios) - 1),
            "tracker_ms_per_step": 1e3 * statistics.fmean(t for r in rounds for t in r["inside"]),
            "setup_s": statistics.fmean(r["setup_s"] for r in rounds),
            "close_s": statistics.fmean(r["close_s"] for r in rounds),
            "round_means_ms": [1e3 * m for m in means[name]],
        }
    return result


def snapshot_bytes(root: Path) -> dict:
    """Bytes of one snapshot (and of the frozen file) per method, on this model."""
    models = {"ft": tiny_llama(), "lora": lora_model(), "sorsa": tiny_llama()}
    apply_sorsa(models["sorsa"], TARGETS, 8)
    sizes = {}
    for method, model in models.items():
        out = root / f"bytes-{method}"
        with spectra.Tracker(model, out, TARGETS, EVERY, mode="deferred") as tracker:
            tracker.step(EVERY)
        frozen = out / FROZEN
        sizes[method] = {
            "step_bytes": (out / step_file(EVERY)).stat().st_size,
            "frozen_bytes": frozen.stat().st_size if frozen.exists() else 0,
        }
    matrices = sum(m.weight.numel() for n, m in models["ft"].named_modules() if n.endswith(TARGETS))
    sizes["paper_full_fp32"] = {"step_bytes": 4 * matrices, "frozen_bytes": 0}
    return sizes


def llama7b_bytes(rank: int = 128, blocks: int = 32, d: int = 4096) -> dict:
    """Per-snapshot bytes in float32 for q and v of Llama-2-7B."""
    per_matrix = {"paper_full_fp32": d * d, "lora": 2 * d * rank, "sorsa": 2 * d * rank + rank}
    return {k: 4 * 2 * blocks * v for k, v in per_matrix.items()}


def show(result: dict, console: Console) -> None:
    table = Table(title=f"step time, LoRA r=8 tiny Llama, every={EVERY}")
    columns = ("tracking", "mean ms/step", "median ms/step", "overhead", "tracker ms/step",
               "set-up s", "close s")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col == "tracking" else "right")
    for name, e in result["overhead"].items():
        table.add_row(
            name, f"{e['mean_step_ms']:.1f}", f"{e['median_step_ms']:.1f}",
            f"{e['overhead_pct']:+.1f}%", f"{e['tracker_ms_per_step']:.3f}",
            f"{e['setup_s']:.2f}", f"{e['close_s']:.2f}",
        )  # fmt: skip
    console.print(table)
    sizes = Table(title="bytes per snapshot (q and v of every block)")
    for col in ("method", "tiny Llama step", "tiny Llama frozen (once)", "Llama-2-7B r=128"):
        sizes.add_column(col, justify="left" if col == "method" else "right")
    full = result["llama7b_bytes"]["paper_full_fp32"]
    for method, e in result["snapshot_bytes"].items():
        big = result["llama7b_bytes"].get(method)
        big_text = f"{big / 2**20:,.1f} MiB ({big / full:.3f}×)" if big else "-"
        sizes.add_row(method, f"{e['step_bytes']:,}", f"{e['frozen_bytes']:,}", big_text)
    console.print(sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="timed steps per run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads for training (1 leaves a core to the worker on a 2-core machine)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["SPECTRA_CACHE"] = str(root / "cache")  # inherited by the worker process
        result = {
            "settings": {k: v for k, v in vars(args).items() if k != "out"}
            | {"every": EVERY, "torch_threads": torch.get_num_threads()},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "overhead": overhead(args, root),
            "snapshot_bytes": snapshot_bytes(root),
            "llama7b_bytes": llama7b_bytes(),
        }
    show(result, Console(width=110))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
