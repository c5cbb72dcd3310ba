"""Peak memory per rank and snapshot time while tracking under FSDP2 and DeepSpeed ZeRO-3.

A Llama of about 136 M parameters (544 MB in float32: hidden 1024, 8 blocks, vocab 16 000)
trains with AdamW for a few steps, 2 processes (torchrun, gloo, CPU, one torch thread each),
FT or LoRA (r = 16) on the q/v projections, with and without a ``Tracker`` (deferred mode,
every 2 steps). FSDP2 shards every block and the root; ZeRO-3 partitions the model as it is
built (``deepspeed.zero.Init``). Each rank resets its RSS high-water mark once the model is
sharded (``/proc/self/clear_refs``, Linux) and reports the peak reached after it, so the
figures are the training's own, and glibc returns every freed block of 64 KiB or more to the
system (``MALLOC_MMAP_THRESHOLD_``), so that RSS follows the memory in use; ``extra`` is the
peak with tracking minus the peak without. ``snapshot s`` is the time
of ``tracker.step`` at a snapshot step (every rank gathers; rank 0 also keeps the snapshot
for its writer thread), ``in snapshot MiB`` the peak RSS inside that call above the RSS
before it; ``setup s`` and ``in setup MiB`` the same for the tracker's construction (the
frozen bases, the step-0 snapshot); ``step s`` a training step without tracking.

    python benchmarks/sharded_tracking.py [--engines fsdp2,zero3] [--methods ft,lora] [--steps 2]
        [--out FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "sharded_tracking.json"
EVERY = 2
TOKENS = 16  # per rank and step: the training compute is not what is measured
# glibc serves every allocation of 64 KiB or more by mmap and unmaps it when freed, so that
# RSS follows the memory in use (by default freed heap stays resident and hides new peaks)
MMAP = {"MALLOC_MMAP_THRESHOLD_": "65536"}
LLAMA = {"vocab_size": 16000, "hidden_size": 1024, "intermediate_size": 2816,
         "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 16,
         "max_position_embeddings": 256}  # fmt: skip
ZERO3 = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
         "zero_optimization": {"stage": 3}, "zero_allow_untested_optimizer": True,
         "steps_per_print": 10**9}  # fmt: skip


def status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def build(engine: str, method: str):
    """(module to call, optimizer) of the Llama under ``engine``, sharded on every rank."""
    import torch
    import transformers  # model classes before deepspeed.zero.Init
    from peft import LoraConfig, get_peft_model

    config = transformers.LlamaConfig(**LLAMA)
    torch.manual_seed(0)
    if engine == "zero3":
        import deepspeed

        deepspeed.init_distributed("gloo")
        with deepspeed.zero.Init(config_dict_or_path=ZERO3):
            model = transformers.LlamaForCausalLM(config)
    else:
        torch.distributed.init_process_group("gloo")
        model = transformers.LlamaForCausalLM(config)
    if method == "lora":
        lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"])
        model = get_peft_model(model, lora)
    if engine == "zero3":
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        net, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ZERO3)
        return net, optimizer
    from torch.distributed.fsdp import fully_shard

    inner = model.get_base_model() if method == "lora" else model
    for layer in inner.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])


class Memory:
    """This process's RSS high-water mark (Linux ``/proc``): reset at will, with the peak over
    every interval since the first reset kept."""

    def __init__(self):
        self.overall = 0.0
        Path("/proc/self/clear_refs").write_text("5")  # the peak so far (building) is not ours

    def reset(self) -> None:
        self.overall = self.peak()
        Path("/proc/self/clear_refs").write_text("5")

    def peak(self) -> float:
        return max(self.overall, status_mib("VmHWM"))

    def measure(self, call, figures: dict, name: str):
        """``call()``, adding its time (s) and its peak RSS above the RSS before it (MiB) to
        ``figures[name + "_s"]`` and ``figures[name + "_mib"]``."""
        self.reset()
        before, begin = status_mib("VmRSS"), time.perf_counter()
        result = call()
        figures.setdefault(f"{name}_s", []).append(time.perf_counter() - begin)
        figures.setdefault(f"{name}_mib", []).append(status_mib("VmHWM") - before)
        return result


def worker(engine: str, method: str, track: bool, steps: int, out: Path) -> None:
    """One rank: train ``steps`` steps (tracked or not) and write its figures as JSON."""
    import torch

    from spectra.callback import Tracker

    net, optimizer = build(engine, method)
    rank = torch.distributed.get_rank()
    gen = torch.Generator().manual_seed(rank)
    data = torch.randint(0, LLAMA["vocab_size"], (steps + 1, 1, TOKENS), generator=gen)
    gc.collect()
    memory, figures, tracker = Memory(), {"rank": rank, "step_s": []}, None
    if track:
        make = lambda: Tracker(net, out / "run", every=EVERY, mode="deferred")  # noqa: E731
        tracker = memory.measure(make, figures, "setup")
    for step in range(1, steps + 1):
        begin = time.perf_counter()
        loss = net(input_ids=data[step], labels=data[step]).loss
        if engine == "zero3":
            net.backward(loss)
            net.step()
        else:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        figures["step_s"].append(time.perf_counter() - begin)
        if tracker is not None:
            name = "snapshot" if step % EVERY == 0 else "log"
            memory.measure(lambda: tracker.step(step, loss=loss.detach()), figures, name)  # noqa: B023
    if tracker is not None:
        tracker.close()
    figures["peak_mib"] = memory.peak()
    (out / f"rank{rank}.json").write_text(json.dumps(figures))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def launch(engine: str, method: str, track: bool, steps: int) -> list[dict]:
    """Run the worker under torchrun (2 processes); each rank's figures."""
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", "2", __file__, "--worker", engine, method,
                   str(int(track)), str(steps), tmp]  # fmt: skip
        env = os.environ | {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", **MMAP}
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        subprocess.run(command, env=env, check=True, **quiet)
        return [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="fsdp2,zero3")
    parser.add_argument("--methods", default="ft,lora")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < EVERY:
        parser.error(f"--steps must be at least {EVERY}: a snapshot is taken every {EVERY} steps")
    if args.worker:
        engine, method, track, steps, out = args.worker
        worker(engine, method, track == "1", int(steps), Path(out))
        return

    from rich.console import Console
    from rich.table import Table

    rows = []
    for engine in args.engines.split(","):
        for method in args.methods.split(","):
            plain, tracked = (launch(engine, method, t, args.steps) for t in (False, True))
            for rank in range(2):
                a, b = plain[rank], tracked[rank]
                rows.append({
                    "engine": engine, "method": method, "rank": rank,
                    "peak_mib": a["peak_mib"], "peak_tracked_mib": b["peak_mib"],
                    "extra_mib": b["peak_mib"] - a["peak_mib"],
                    "snapshot_s": statistics.mean(b["snapshot_s"]),
                    "snapshot_mib": max(b["snapshot_mib"]), "setup_s": b["setup_s"][0],
                    "setup_mib": b["setup_mib"][0],
                    "step_s": statistics.median(a["step_s"]),
                })  # fmt: skip
    table = Table(title=f"Llama 136 M params (544 MB fp32), 2 ranks, q/v every {EVERY} steps")
    columns = ("engine", "method", "rank", "peak MiB", "tracked MiB", "extra MiB", "snapshot s",
               "in snapshot MiB", "setup s", "in setup MiB", "step s")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    for r in rows:
        figures = (
            f"{r['peak_mib']:.0f}", f"{r['peak_tracked_mib']:.0f}", f"{r['extra_mib']:+.0f}",
            f"{r['snapshot_s']:.3f}", f"{r['snapshot_mib']:.0f}", f"{r['setup_s']:.2f}",
            f"{r['setup_mib']:.0f}", f"{r['step_s']:.2f}",
        )  # fmt: skip
        table.add_row(r["engine"], r["method"], str(r["rank"]), *figures)
    Console(width=120).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "steps": args.steps,
            "every": EVERY, "llama": LLAMA}  # fmt: skip
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
