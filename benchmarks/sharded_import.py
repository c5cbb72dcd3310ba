"""Importing sharded checkpoints (DCP, ZeRO-3): the bytes read against the checkpoints' size.

Trains the four runs of ``tests/checkpoint_train.py`` (2 ranks, gloo, CPU; a tiny Llama with
33-wide hidden states, checkpoints at steps 2 and 4): Trainer + accelerate FSDP
(``SHARDED_STATE_DICT``), FSDP2 + ``dcp.save``, Trainer + DeepSpeed ZeRO-3 (FT) and ZeRO-3 with
LoRA. Then imports each (the q/v projections) in this process, once to load the modules and
once timed, counting what the readers take from the checkpoint files:

- DCP: every byte the reader reads (its ``open`` wrapped): the ``.metadata`` pickles and the
  target chunks;
- ZeRO-3 (memory-mapped ``torch.load``): the pickles (``data.pkl`` of every rank file, read
  whole) and the target pieces of the fp32 flat groups (what is sliced and paged in);
- LoRA under ZeRO-3: the adapter file (only its header and the adapter tensors are read).

"checkpoint bytes" is every file of the checkpoint folders (optimizer states included).
Prints a table and writes benchmarks/results/sharded_import.json.

    python benchmarks/sharded_import.py [--dir DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

TESTS = Path(__file__).resolve().parent.parent / "tests"
KINDS = {  # kind: (sources under the run folder, --steps)
    "fsdp": (["fsdp"], None),
    "dcp": (["dcp/step-2", "dcp/step-4"], [2, 4]),
    "zero3": (["zero3"], None),
    "zero3-lora": (["zero3-lora"], None),
}


class Counted(io.FileIO):
    """A file whose reads are added up (the DCP reader's ``open``)."""

    total = 0

    def read(self, size=-1):
        data = super().read(size)
        Counted.total += len(data)
        return data

    def readinto(self, buffer):
        n = super().readinto(buffer) or 0
        Counted.total += n
        return n


def train(kind: str, root: Path) -> None:
    env = os.environ | {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "DS_ACCELERATOR": "cpu"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", str(TESTS / "checkpoint_train.py"), kind, str(root)]  # fmt: skip
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=900)


def zero_bytes(run_dir: Path) -> int:
    """Pickles of every ZeRO rank file read, plus the fp32 pieces of each target."""
    from spectra.importer.zero import open_zero
    from spectra.snapshots import open_run

    provenance = open_run(run_dir).manifest.extra["import"]["steps"]
    total = 0
    for step, record in provenance.items():
        if step == "0":
            continue
        tensors = open_zero(Path(record["source"]))
        for file in record["files"]:
            if file.endswith(".pt"):
                with zipfile.ZipFile(file) as z:
                    total += sum(i.file_size for i in z.infolist() if i.filename.endswith(".pkl"))
            for name in record["files"][file].get("pieces", {}):
                shape = tensors.layout[name][0]
                total += math.ceil(math.prod(shape) / tensors.world) * tensors.world * 4
    return total


def measure(kind: str, root: Path) -> dict:
    import spectra.importer.dcp as dcp_module
    from spectra.importer import import_run
    from spectra.snapshots import open_run

    sources, steps = KINDS[kind]
    folders = [root / s for s in sources]
    import_run(folders, root / "base", out=root / "warm", steps=steps)  # loads the modules
    Counted.total = 0
    dcp_module.open = lambda path, mode: Counted(path, "r")
    start = time.perf_counter()
    run_dir = import_run(folders, root / "base", out=root / "runs", steps=steps)
    seconds = time.perf_counter() - start
    del dcp_module.open
    provenance = open_run(run_dir).manifest.extra["import"]["steps"]
    checkpoints = [Path(r["source"]) for s, r in provenance.items() if s != "0"]
    if kind in ("fsdp", "dcp"):
        read = Counted.total
    elif kind == "zero3":
        read = zero_bytes(run_dir)
    else:  # adapter files: header and adapter tensors
        read = sum(Path(f).stat().st_size for r in provenance.values() for f in r["files"]
                   if r["source"] in map(str, checkpoints))  # fmt: skip
    size = sum(f.stat().st_size for c in checkpoints for f in c.rglob("*") if f.is_file())
    return {"kind": kind, "checkpoints": len(checkpoints), "checkpoint_bytes": size,
            "bytes_read": read, "import_seconds": seconds}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: /tmp)")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results/sharded_import.json")  # fmt: skip
    args = parser.parse_args()
    console = Console(width=120)
    results = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for kind in KINDS:
            root = Path(tmp) / kind
            console.log(f"training {kind}")
            train(kind, root)
            results.append(measure(kind, root))
    table = Table(title="spectra import of sharded checkpoints (tiny Llama, 2 ranks, q/v)")
    for col in ("kind", "checkpoints", "checkpoint bytes", "bytes read", "read / size",
                "import s"):  # fmt: skip
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            r["kind"], str(r["checkpoints"]), f"{r['checkpoint_bytes']:,}", f"{r['bytes_read']:,}",
            f"{r['bytes_read'] / r['checkpoint_bytes']:.1%}", f"{r['import_seconds']:.3f}",
        )  # fmt: skip
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results}, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
