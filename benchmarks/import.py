"""Importing a series of full-weight checkpoints: by reference, by copy, from the Hub, and
the naive route.

Writes a synthetic Llama-shaped model (default ``tinyllama``: TinyLlama-1.1B's shape, 2.2 GB
per checkpoint in bf16) as a base and ``--checkpoints`` fine-tuned versions in a Trainer
output folder (``checkpoint-N/``), each as sharded safetensors with an index, written
directly from tensors (no model is built). Then, each in its own subprocess (peak RSS is the
child's own VmHWM; bytes read and written are its /proc/self/io ``read_bytes`` and
``write_bytes``, from storage: every file is evicted from the page cache before each route):

- ``import ref``   ``spectra import OUT --base BASE``: q/v tensors read and hashed, steps
  stored by reference (nothing copied);
- ``import copy``  the same with ``--copy``: q/v tensors copied into the run;
- ``read ref``, ``read copy``  every (step, layer) weight of those runs read back, as
  ``compute`` reads them (by reference: each tensor's and header's SHA-256 checked);
- ``compare ref``, ``compare copy``  ``spectra compare BASE OUT/checkpoint-N`` (the last
  checkpoint: import, compute and summary) on the q/v of the first ``--compare-blocks``
  blocks (compute's SVDs, the same by reference and by copy, dominate), each with an empty
  SVD cache;
- ``naive``        ``AutoModelForCausalLM.from_pretrained`` of the base and of every checkpoint
  (default dtype, which in transformers 5 is the stored bf16, mapped from the files), then
  the q/v weights copied out, as a run needs them;
- ``naive fp32``   the same with ``dtype=torch.float32`` (what a float analysis loads);
- ``hub``          ``spectra import org/ft --base org/base`` from a loopback stand-in for the
  Hub (``tests/fake_hub.py``, HF_ENDPOINT) serving the base and the last checkpoint: only the
  headers and q/v byte ranges are fetched; ``hub again`` the same import from spectra's cache.

Figures go to stdout and benchmarks/results/import.json (rewritten after every route).
``--keep DIR`` writes the checkpoints there once and reuses them in later runs; ``--routes``
runs some routes only (a ``read`` route reads what its ``import`` route wrote).

    python benchmarks/import.py [--size tinyllama|small] [--checkpoints 4] [--shard-mb 1000]
                                [--compare-blocks 4] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

SIZES = {  # hidden, layers, intermediate, heads, kv heads, vocab
    "tinyllama": (2048, 22, 5632, 32, 4, 32000),
    "small": (256, 4, 688, 8, 2, 4096),
}
ROUTES = ("import ref", "import copy", "read ref", "read copy", "compare ref", "compare copy",
          "naive", "naive fp32", "hub", "hub again")  # fmt: skip
TARGETS = ("q_proj.weight", "v_proj.weight")
TESTS = Path(__file__).resolve().parent.parent / "tests"  # fake_hub.py, the Hub's stand-in


def peak_rss_kib() -> int:
    """This process's own peak RSS (VmHWM; ru_maxrss would carry the parent's over exec)."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))


def storage_io() -> dict[str, int]:
    """Bytes this process read from and wrote to storage so far (/proc/self/io)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return {"read": int(fields["read_bytes"]), "written": int(fields["write_bytes"])}


def evict(root: Path) -> None:
    """Every file under ``root`` out of the page cache (written back first)."""
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def disk_bytes(root: Path) -> int:
    """Bytes of the files under ``root``, as stored."""
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


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


def run_cli(*args: str) -> None:
    """``spectra ARGS`` in this process; SystemExit unless it succeeds."""
    from spectra.cli import main

    sys.argv = ["spectra", *map(str, args)]
    try:
        main()
    except SystemExit as exc:
        if exc.code:
            raise


def read_back(runs: Path) -> None:
    """Every (step, layer) weight of the runs in ``runs``, read as compute reads it."""
    from spectra.snapshots import open_run

    for path in sorted(p for p in runs.iterdir() if p.is_dir()):
        run = open_run(path)
        for step in run.steps:
            for layer in run.layers:
                run.weight(step, layer)


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


def last_checkpoint(out: Path) -> Path:
    return max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def one(route: str, base: Path, out: Path, runs: Path, blocks: int) -> dict:
    """Run one route in this process: seconds, peak RSS, bytes read and written (all after
    the imports every route needs, so that they measure the route alone)."""
    import huggingface_hub  # noqa: F401
    import transformers  # noqa: F401

    import spectra.engine
    import spectra.hub
    import spectra.importer  # noqa: F401

    before, start = storage_io(), time.perf_counter()
    kind, _, how = route.partition(" ")
    copy = ["--copy"] if how == "copy" else []
    if kind == "import":
        run_cli("import", out, "--base", base, "--out", runs, *copy)
    elif kind == "read":
        read_back(runs)
    elif kind == "compare":
        targets = [f"model.layers.{i}.self_attn.{m}" for i in range(blocks) for m in "qv"]
        targets = [f"{t}_proj" for t in targets]
        run_cli("compare", base, last_checkpoint(out), "--out", runs, "--targets",
                ",".join(targets), *copy)  # fmt: skip
    elif kind == "hub":
        run_cli("import", "org/ft", "--base", "org/base", "--out", runs, "--overwrite")
    else:
        run_naive(base, out, "fp32" if how == "fp32" else "auto")
    seconds, after = time.perf_counter() - start, storage_io()
    return {"route": route, "seconds": seconds, "peak_rss_mib": peak_rss_kib() / 1024,
            "read_bytes": after["read"] - before["read"],
            "written_bytes": after["written"] - before["written"]}  # fmt: skip


def child(route: str, root: Path, work: Path, env: dict, blocks: int) -> dict:
    """One route in a fresh process, from a cold page cache; its figures and wall time."""
    kind, _, how = route.partition(" ")
    runs = work / {"import": f"runs-{how}", "read": f"runs-{how}", "hub": "runs-hub"}.get(
        kind, f"runs-{route.replace(' ', '-')}"
    )
    evict(root)
    paths = [str(root / "base"), str(root / "out"), str(runs), str(blocks)]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--one", route, *paths],
                          capture_output=True, text=True, env=env)  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{route} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    run_dirs = [p for p in runs.iterdir() if p.is_dir()] if runs.is_dir() else []
    steps = sum(len(json.loads((p / "manifest.json").read_text())["steps"]) for p in run_dirs)
    on_disk = sum(disk_bytes(p) for p in run_dirs)
    per_step = on_disk / steps if steps and kind in ("import", "compare", "hub") else None
    return result | {"wall_seconds": wall, "run_bytes_per_step": per_step}


def checkpoints(root: Path, args) -> int:
    """Write the base and the checkpoints under ``root`` unless they are there; their size."""
    shard = args.shard_mb * 2**20
    names = [root / "base", *(root / "out" / f"checkpoint-{100 * n}"
                              for n in range(1, args.checkpoints + 1))]  # fmt: skip
    for version, folder in enumerate(names):
        if not (folder / "model.safetensors.index.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            write_checkpoint(folder, args.size, version, shard)
    index = json.loads((root / "base" / "model.safetensors.index.json").read_text())
    return index["metadata"]["total_size"]


def hub_env(tmp: Path, endpoint: str) -> dict[str, str]:
    """A child's environment: huggingface_hub pointed at the stand-in Hub, homes in ``tmp``."""
    return os.environ | {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp / "hf"),
                         "HF_HUB_CACHE": str(tmp / "hf" / "hub"), "HF_HUB_OFFLINE": "0",
                         "XDG_CONFIG_HOME": str(tmp / "config")}  # fmt: skip


def table(record: dict) -> Table:
    """The figures of every route so far."""
    title = (f"1 + {record['checkpoints']} checkpoints of a {record['size']} Llama "
             f"({record['checkpoint_bytes'] / 1e9:.2f} GB each, bf16, sharded); bytes from "
             "storage with a cold page cache")  # fmt: skip
    shown = Table(title=title)
    for col in ("route", "wall s", "in-process s", "peak RSS MiB", "read MB", "written MB",
                "run MB / step", "served MB (of repo MB)"):  # fmt: skip
        shown.add_column(col, justify="right")
    for r in record["results"]:
        per_step, served = r["run_bytes_per_step"], r["served_bytes"]
        shown.add_row(
            r["route"], f"{r['wall_seconds']:.1f}", f"{r['seconds']:.1f}",
            f"{r['peak_rss_mib']:.0f}", f"{r['read_bytes'] / 1e6:.0f}",
            f"{r['written_bytes'] / 1e6:.1f}",
            "" if per_step is None else f"{per_step / 1e6:.3f}",
            "" if served is None else f"{served / 1e6:.1f} ({record['hub_repo_bytes'] / 1e6:.0f})",
        )  # fmt: skip
    return shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="tinyllama")
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--shard-mb", type=int, default=1000)
    parser.add_argument("--compare-blocks", type=int, default=4)
    parser.add_argument("--routes", default=",".join(ROUTES), help="comma list [all]")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: /tmp)")
    parser.add_argument("--keep", type=Path, default=None, help="write (once) and keep here")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results/import.json")
    parser.add_argument("--one", nargs=5, metavar=("ROUTE", "BASE", "OUT", "RUNS", "BLOCKS"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.one:  # a child process measuring one route
        route, base, out, runs, blocks = args.one
        print(json.dumps(one(route, Path(base), Path(out), Path(runs), int(blocks))))
        return
    sys.path.insert(0, str(TESTS))
    from fake_hub import FakeHub

    console = Console(width=140)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    keep = nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(dir=args.dir)
    with keep as root:
        root = Path(root)
        start = time.perf_counter()
        size = checkpoints(root, args)
        console.log(f"1 + {args.checkpoints} checkpoints of {size / 1e9:.2f} GB ready "
                    f"in {time.perf_counter() - start:.0f} s")  # fmt: skip
        work = root / "work"  # this run's runs, caches and homes
        shutil.rmtree(work, ignore_errors=True)
        hub = FakeHub(lifetime=4 * 3600)
        repos = [hub.add("org/base", root / "base"),
                 hub.add("org/ft", last_checkpoint(root / "out"))]  # fmt: skip
        record = {"size": args.size, "checkpoint_bytes": size, "checkpoints": args.checkpoints,
                  "shard_mb": args.shard_mb, "compare_blocks": args.compare_blocks,
                  "hub_repo_bytes": sum(f["size"] for r in repos for f in r.files.values()),
                  "results": []}  # fmt: skip
        try:
            for route in args.routes.split(","):
                console.log(route)
                env = hub_env(work, hub.endpoint)
                cache = "hub" if route.startswith("hub") else route.replace(" ", "-")
                env["SPECTRA_CACHE"] = str(work / f"cache-{cache}")
                served = hub.served()
                result = child(route, root, work, env, args.compare_blocks)
                result["served_bytes"] = hub.served() - served if route.startswith("hub") else None
                record["results"].append(result)
                args.out.write_text(json.dumps(record, indent=2))
        finally:
            hub.close()
            shutil.rmtree(work, ignore_errors=True)
    console.print(table(record))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
