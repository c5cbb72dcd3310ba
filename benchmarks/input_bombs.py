"""Former resource bombs (issue 17): the peak memory and time of refusing each.

Writes small inputs (a tiny Llama base, its fine-tune, a LoRA adapter, a GPT-2, a copy of the
embedded model, a computed run), damages a copy of them per case, and runs the CLI on it in a
subprocess under an address-space limit (``--limit-gib``) and a timeout. Each case is run
twice: once cold, for the process's peak RSS (its own VmHWM, read at exit), and once with the
modules the command imports loaded first, for the time of the command itself (what follows
start-up). A case ends ``refused`` (one ``error:`` line, exit 2), ``accepted`` (exit 0: a
request that is fine, such as a block range reaching beyond the blocks), ``traceback``,
``memory`` (MemoryError) or ``killed`` (the timeout). Figures go to stdout and
benchmarks/results/input_bombs.json.

    python benchmarks/input_bombs.py [--limit-gib 10] [--timeout 300] [--only NAME ...]
        [--output input_bombs.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
CATASTROPHIC = "(" + "[a-z_.0-9]*" * 12 + ")$X"
# The child: optionally imports what the commands use, then times spectra's main() and writes
# the time and its own peak RSS when it exits.
CHILD = """
import atexit, json, os, sys, time
if os.environ["WARM"] == "1":
    import torch, transformers, pandas, pyarrow.parquet  # noqa
    import spectra.importer, spectra.recipes, spectra.store, spectra.plotting  # noqa
from spectra.cli import main
def report():
    status = open("/proc/self/status").read()
    peak = next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmHWM"))
    json.dump({"seconds": time.perf_counter() - start, "peak_mib": peak / 1024},
              open(os.environ["REPORT"], "w"))
atexit.register(report)
sys.argv = ["spectra", *sys.argv[1:]]
start = time.perf_counter()
main()
"""


def edit_json(path: Path, **fields) -> None:
    raw = json.loads(path.read_text()) | fields
    path.write_text(json.dumps(raw))


def make_inputs(root: Path) -> None:
    """Tiny checkpoints to damage, and a computed run to plot."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "base")
    LlamaForCausalLM(config).save_pretrained(root / "ft")
    lora = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, target_modules=["q_proj"]))
    lora.save_pretrained(root / "lora")
    GPT2Model(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4)).save_pretrained(
        root / "gpt2"
    )
    from spectra import default

    shutil.copytree(default.MODEL, root / "tiny")
    run = ["import", "ft", "--base", "base", "--out", "runs", "--name", "run"]
    for args in (run, ["compute", "runs/run"]):
        subprocess.run([sys.executable, "-m", "spectra", *args], cwd=root, check=True,
                       capture_output=True)  # fmt: skip


def big_header(path: Path, megabytes: int) -> None:
    """A safetensors file whose header lists zero-size tensors, ``megabytes`` of them."""
    entry = '"t{}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'
    count = megabytes * 2**20 // len(entry.format(10**6))
    header = ("{" + ",".join(entry.format(i) for i in range(count)) + "}").encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)


IMPORT = ["import", "--out", "out", "--name", "bomb"]
TRACK = ["track", "--method", "ft", "--device", "cpu", "--out", "out", "--model", "tiny"]
# name: (command, change to the inputs)
CASES = {
    "import: gpt2 n_embd = 1e12": (
        [*IMPORT, "gpt2", "--base", "gpt2"],
        lambda r: edit_json(r / "gpt2/config.json", n_embd=10**12),
    ),
    "import: adapter r = 1e9": (
        [*IMPORT, "lora", "--base", "base"],
        lambda r: edit_json(r / "lora/adapter_config.json", r=10**9),
    ),
    "import: 87 MiB safetensors header": (
        [*IMPORT, "h.safetensors", "--base", "base"],
        lambda r: big_header(r / "h.safetensors", 87),
    ),
    "import: catastrophic target_modules": (
        [*IMPORT, "lora", "--base", "base"],
        lambda r: edit_json(r / "lora/adapter_config.json", target_modules=CATASTROPHIC),
    ),
    "import: config.json 10,000 deep": (
        [*IMPORT, "ft", "--base", "base"],
        lambda r: (r / "ft/config.json").write_text("[" * 10_000 + "]" * 10_000),
    ),
    "track: hidden_size = 1e12": (
        [*TRACK, "--steps", "1"],
        lambda r: edit_json(r / "tiny/config.json", hidden_size=10**12),
    ),
    "track: vocab_size = 1e12": (
        [*TRACK, "--steps", "1"],
        lambda r: edit_json(r / "tiny/config.json", vocab_size=10**12),
    ),
    "track: num_hidden_layers = 1e6": (
        [*TRACK, "--steps", "1"],
        lambda r: edit_json(r / "tiny/config.json", num_hidden_layers=10**6),
    ),
    "track: --epochs 1e300": ([*TRACK, "--epochs", "1e300"], lambda r: None),
    "plot: --layers 0-1000000000": (
        ["plot", "runs/run.parquet", "--layers", "0-1000000000", "--out", "figs"],
        lambda r: None,
    ),
    "compute: manifest 10,000 deep": (
        ["compute", "runs/run"],
        lambda r: (r / "runs/run/manifest.json").write_text("[" * 10_000 + "]" * 10_000),
    ),
}


def run_case(inputs: Path, args: list[str], change, warm: bool, limit: int, timeout: float):
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch) / "in"
        shutil.copytree(inputs, work, symlinks=True)
        change(work)
        report = Path(scratch) / "report.json"
        env = os.environ | {"WARM": str(int(warm)), "REPORT": str(report), "OMP_NUM_THREADS": "1",
                            "SPECTRA_CACHE": str(Path(scratch) / "cache")}  # fmt: skip
        limited = ["prlimit", f"--as={limit}"] if shutil.which("prlimit") else []
        start = time.perf_counter()
        child = subprocess.Popen([*limited, sys.executable, "-c", CHILD, *args], cwd=work,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, start_new_session=True)  # fmt: skip
        timer = threading.Timer(timeout, lambda: os.killpg(child.pid, signal.SIGKILL))
        timer.start()
        out, err = child.communicate()
        timer.cancel()
        wall = time.perf_counter() - start
        got = json.loads(report.read_text()) if report.exists() else {}
    lines = [line for line in err.splitlines() if line.strip()]
    if child.returncode < 0:
        outcome = "killed"
    elif "MemoryError" in err:
        outcome = "memory"
    elif any(line.startswith("Traceback") for line in lines):
        outcome = "traceback"
    elif child.returncode == 2 and lines and lines[-1].startswith("error:"):
        outcome = "refused"
    else:
        outcome = "accepted" if child.returncode == 0 else f"exit {child.returncode}"
    last = (lines or [out.strip()])[-1][:160]
    return {"outcome": outcome, "wall_s": round(wall, 2), "seconds": got.get("seconds"),
            "peak_mib": got.get("peak_mib"), "last": last}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-gib", type=float, default=10)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--output", default="input_bombs.json", help="under benchmarks/results/")
    options = parser.parse_args()
    console = Console()
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        inputs = Path(scratch)
        make_inputs(inputs)
        for name, (args, change) in CASES.items():
            if options.only and not any(o in name for o in options.only):
                continue
            limit = int(options.limit_gib * 2**30)
            cold = run_case(inputs, args, change, False, limit, options.timeout)
            warm = run_case(inputs, args, change, True, limit, options.timeout)
            results[name] = {"cold": cold, "warm": warm}
            console.print(f"{name}: {cold['outcome']}, {cold['peak_mib'] or 0:.0f} MiB, "
                          f"{warm['seconds'] or 0:.2f} s — {cold['last']}")  # fmt: skip
    table = Table(title="Refusing former resource bombs")
    for column in ("case", "outcome", "peak RSS (MiB)", "command time (s)", "wall (s)"):
        table.add_column(column)
    nan = float("nan")
    for name, r in results.items():
        cold, warm = r["cold"], r["warm"]
        table.add_row(name, cold["outcome"], f"{cold['peak_mib'] or nan:.0f}",
                      f"{warm['seconds'] or nan:.2f}", f"{cold['wall_s']:.1f}")  # fmt: skip
    console.print(table)
    out = ROOT / "benchmarks" / "results" / options.output
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
