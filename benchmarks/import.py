"""Importing a series of full-weight checkpoints: ``spectra import`` beside the naive route.

Writes a synthetic Llama-shaped model (default ``tinyllama``: TinyLlama-1.1B's shape, 2.2 GB
per checkpoint in bf16) as a base and ``--checkpoints`` fine-tuned versions in a Trainer
output folder (``checkpoint-N/``), each as sharded safetensors with an index, written
directly from tensors (no model is built). Then, each in its own subprocess (peak RSS is the
child's own VmHWM), in one run:

- ``spectra``    ``spectra import OUT --base BASE``: q/v tensors only (and their SHA-256);
- ``naive``      ``AutoModelForCausalLM.from_pretrained`` of the base and of every checkpoint
  (default dtype, which in transformers 5 is the stored bf16, mapped from the files), then
  the q/v weights copied out, as a run needs them;
- ``naive-fp32`` the same with ``dtype=torch.float32`` (what a float analysis loads).

Files are freshly written, so every route reads them from the page cache. Figures go to
stdout and benchmarks/results/import.json.

    python benchmarks/import.py [--size tinyllama|small] [--checkpoints 4] [--shard-mb 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

SIZES = {  # hidden, layers, intermediate, heads, kv heads, vocab
    "tinyllama": (2048, 22, 5632, 32, 4, 32000),
    "small": (256, 4, 688, 8, 2, 4096),
}
ROUTES = ("spectra", "naive", "naive-fp32")
TARGETS = ("q_proj.weight", "v_proj.weight")


def peak_rss_kib() -> int:
    """This process's own peak RSS (VmHWM; ru_maxrss would carry the parent's over exec)."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))


def shapes(size: str) -> tuple[dict[str, tuple[int, ...]], dict]:
    """{tensor name: shape} of a LlamaForCausalLM state dict, and its config.json."""
    d, layers, inter, heads, kv, vocab = SIZES[size]
    kv_dim = kv * d // heads
    names = {"model.embed_tokens.weight": (vocab, d)}
    for i in range(layers):
        p = f"model.layers.{i}."
        names |= {
            f"{p}self_attn.q_proj.weight": (d, d), f"{p}self_attn.k_proj.weight": (kv_dim, d),
            f"{p}self_attn.v_proj.weight": (kv_dim, d), f"{p}self_attn.o_proj.weight": (d, d),
            f"{p}mlp.gate_proj.weight": (inter, d), f"{p}mlp.up_proj.weight": (inter, d),
            f"{p}mlp.down_proj.weight": (d, inter), f"{p}input_layernorm.weight": (d,),
            f"{p}post_attention_layernorm.weight": (d,),
        }  # fmt: skip
    names |= {"model.norm.weight": (d,), "lm_head.weight": (vocab, d)}
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": d,
        "num_hidden_layers": layers, "intermediate_size": inter, "num_attention_heads": heads,
        "num_key_value_heads": kv, "vocab_size": vocab, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "dtype": "bfloat16",
    }  # fmt: skip
    return names, config


def write_checkpoint(folder: Path, size: str, version: int, shard_bytes: int) -> int:
    """A sharded bf16 checkpoint: the base (version 0) plus a version-sized update; bytes."""
    from safetensors.torch import save_file

    names, config = shapes(size)
    folder.mkdir(parents=True)
    shards, shard, used = [], {}, 0
    for index, (name, shape) in enumerate(names.items()):
        w = torch.randn(shape, generator=torch.Generator().manual_seed(index)) * 0.02
        if version:
            noise = torch.Generator().manual_seed(1000 * version + index)
            w += torch.randn(shape, generator=noise) * 2e-4 * version
        tensor = w.to(torch.bfloat16)
        if shard and used + tensor.nbytes > shard_bytes:
            shards.append(shard)
            shard, used = {}, 0
        shard[name], used = tensor, used + tensor.nbytes
    shards.append(shard)
    weight_map, total = {}, 0
    for i, part in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(part, folder / file, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, file)
        total += sum(t.nbytes for t in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps(config))
    return total


def run_spectra(base: Path, out: Path, runs: Path) -> None:
    from spectra.cli import main

    sys.argv = ["spectra", "import", str(out), "--base", str(base), "--out", str(runs)]
    try:
        main()
    except SystemExit as exc:
        if exc.code:
            raise


def run_naive(base: Path, out: Path, dtype: str) -> None:
    from transformers import AutoModelForCausalLM

    folders = [base, *sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))]
    kept = []
    for folder in folders:
        options = {"dtype": torch.float32} if dtype == "fp32" else {}
        model = AutoModelForCausalLM.from_pretrained(folder, **options)
        kept.append(
            {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith(TARGETS)}
        )
        del model


def one(route: str, base: Path, out: Path, runs: Path) -> dict:
    """Run one route in this process: seconds (after interpreter start) and peak RSS."""
    start = time.perf_counter()
    if route == "spectra":
        run_spectra(base, out, runs)
    else:
        run_naive(base, out, "fp32" if route == "naive-fp32" else "auto")
    return {"route": route, "seconds": time.perf_counter() - start,
            "peak_rss_mib": peak_rss_kib() / 1024}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="tinyllama")
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--shard-mb", type=int, default=1000)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: /tmp)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results/import.json")
    parser.add_argument("--one", nargs=4, metavar=("ROUTE", "BASE", "OUT", "RUNS"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.one:  # a child process measuring one route
        route, *paths = args.one
        print(json.dumps(one(route, *map(Path, paths))))
        return
    console = Console(width=120)
    results = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        size = write_checkpoint(tmp / "base", args.size, 0, args.shard_mb * 2**20)
        for n in range(1, args.checkpoints + 1):
            write_checkpoint(tmp / "out" / f"checkpoint-{100 * n}", args.size, n,
                             args.shard_mb * 2**20)  # fmt: skip
        console.log(f"wrote 1 + {args.checkpoints} checkpoints of {size / 1e9:.2f} GB "
                    f"in {time.perf_counter() - start:.0f} s")  # fmt: skip
        for route in ROUTES:
            console.log(route)
            runs = tmp / f"runs-{route}"
            child = [sys.executable, __file__, "--one", route, str(tmp / "base"),
                     str(tmp / "out"), str(runs)]  # fmt: skip
            start = time.perf_counter()
            done = subprocess.run(child, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if done.returncode:
                console.print(done.stderr[-3000:])
                raise SystemExit(f"{route} failed")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(result | {"wall_seconds": wall})
    spectra = results[0]
    table = Table(title=f"import of 1 + {args.checkpoints} checkpoints of a {args.size} Llama "
                  f"({size / 1e9:.2f} GB each, bf16, sharded)")  # fmt: skip
    for col in ("route", "wall s", "in-process s", "peak RSS MiB", "time / spectra",
                "RSS / spectra"):  # fmt: skip
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            r["route"], f"{r['wall_seconds']:.1f}", f"{r['seconds']:.1f}",
            f"{r['peak_rss_mib']:.0f}", f"{r['wall_seconds'] / spectra['wall_seconds']:.2f}",
            f"{r['peak_rss_mib'] / spectra['peak_rss_mib']:.2f}",
        )  # fmt: skip
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"size": args.size, "checkpoint_bytes": size, "checkpoints": args.checkpoints,
              "shard_mb": args.shard_mb, "results": results}  # fmt: skip
    args.out.write_text(json.dumps(record, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
