"""The manifest: everything about a run that is not a tensor (:class:`Manifest`, with one
:class:`Target` per tracked layer), written as JSON and read back through
:mod:`spectra.typedjson`, which checks every field against its type; values of the right type
that no spectra run can have are refused too, so a bad manifest becomes a SpectraError that
names the file and the field."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field

from spectra import __version__
from spectra.errors import SpectraError
from spectra.factors import KINDS, Rows, row_count
from spectra.limits import PID, in_range, loads
from spectra.typedjson import at, read_dataclass

FORMAT_VERSION = 2  # the newest format this spectra reads
PLAIN_FORMAT = 1  # every step's tensors in the run directory
REFERENCES_FORMAT = 2  # some steps stored by reference (``referenced``): spectra 0.1 cannot read it
ENGINES = ("ddp", "fsdp1", "fsdp2", "zero3")
# What a sharded run's snapshots hold: the parameters the optimizer updates (DDP, FSDP1 and
# FSDP2, whose sharded parameters keep full precision under mixed precision), ZeRO-3's fp32
# master copy of each trainable parameter, or ZeRO-3's working copy (no optimizer attached).
WEIGHTS = ("parameters", "fp32_master", "working")


@dataclass
class Target:
    """One tracked layer: parametrization kind, (out, in) shape, adapter rank, and for a slice
    of a fused projection the ``source`` module whose tensors it reads and its output ``rows``;
    for an MoE expert the ``source`` 3-D parameter whose tensors hold every expert stacked
    ([E, …]) and the ``expert`` it takes."""

    kind: str
    shape: tuple[int, int]
    rank: int | None = None
    source: str | None = None
    rows: Rows | None = None
    expert: int | None = None


@dataclass
class WritingProcess:
    """The process that writes a run: its host, process id and PID namespace (an inode number;
    two containers on one host can reuse each other's process ids)."""

    host: str
    pid: int
    namespace: int | None = None

    @classmethod
    def this_process(cls) -> WritingProcess:
        return cls(socket.gethostname(), os.getpid(), _pid_namespace())

    def gone(self) -> bool:
        """Whether this process has certainly ended: it ran on this host, in this PID
        namespace, and no process has its id now (False whenever that cannot be known)."""
        here = WritingProcess.this_process()
        if (self.host, self.namespace) != (here.host, here.namespace):
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # it exists, as another user's process
            return False
        return False


@dataclass
class Distributed:
    """How a multi-process training held its weights: the ``engine`` (one of :data:`ENGINES`),
    the number of processes, and what the snapshots copy (one of :data:`WEIGHTS`)."""

    engine: str
    world_size: int
    weights: str = "parameters"


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux
        return None


@dataclass
class Manifest:
    """Everything about a run that is not a tensor.

    ``resumed`` lists the steps a resumed training restarted from; the snapshots after each
    were discarded. ``referenced`` lists the steps stored by reference (an import's tensors
    left in their source files; see :mod:`spectra.snapshots.references`). ``extra["status"]``
    is "completed" or "failed" once training ended (with the exception in ``extra["error"]``).
    ``writer`` is the process that last opened the run for writing: a follower stops waiting
    when it is gone before the run is finished (a training killed by a signal or the OOM
    killer marks nothing). ``distributed`` says how a multi-process training held its weights
    (None for one process).
    """

    run: str
    method: str
    targets: dict[str, Target]
    model: str | None = None
    rank: int | None = None
    gamma: float | None = None
    learning_rate: float | None = None
    every: int | None = None
    steps: list[int] = field(default_factory=list)
    finished: bool = False
    extra: dict = field(default_factory=dict)
    format: int = PLAIN_FORMAT
    spectra_version: str = __version__
    run_id: str | None = None
    resumed: list[int] = field(default_factory=list)
    writer: WritingProcess | None = None
    ordinal_steps: bool = False  # steps 1, 2, … only order checkpoints of unknown step
    distributed: Distributed | None = None
    referenced: list[int] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Whether training ended with an exception."""
        return self.extra.get("status") == "failed"

    @property
    def abandoned(self) -> bool:
        """Whether the run is unfinished and the process that was writing it has ended."""
        return not self.finished and self.writer is not None and self.writer.gone()

    def to_json(self) -> str:
        raw = asdict(self)
        raw["targets"] = {
            name: {k: v for k, v in t.items() if v is not None}
            for name, t in raw["targets"].items()
        }
        if not raw["referenced"]:  # a plain run's manifest stays readable by spectra 0.1
            del raw["referenced"]
        return json.dumps(raw, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "manifest") -> Manifest:
        """The manifest in ``text``; SpectraError naming ``where`` and the field if it is bad."""
        try:
            raw = loads(text.decode("utf-8") if isinstance(text, bytes) else text, where)
        except UnicodeDecodeError:
            raise SpectraError(f"{where} is not UTF-8 text") from None
        except ValueError as exc:
            raise SpectraError(f"{where} is not a valid spectra manifest: {exc}") from None
        if not isinstance(raw, dict):
            raise SpectraError(f"{where} is not a spectra manifest (not a JSON object)")
        version = raw.get("format", FORMAT_VERSION)
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise SpectraError(
                f"{where} has format {version}; this spectra reads up to {FORMAT_VERSION}"
            )
        try:
            manifest = read_dataclass(raw, cls, "")
            check_manifest(manifest)
        except SpectraError as exc:
            raise SpectraError(f"{where}: {exc}") from None
        manifest.steps = sorted(set(manifest.steps))
        return manifest


def check_run_name(name: str) -> None:
    """SpectraError unless ``name`` can name a run (non-empty, printable: no line breaks)."""
    _name(name, "run name")


def check_manifest(manifest: Manifest) -> None:
    """SpectraError on values of the right type that no spectra run can have (what
    :meth:`Manifest.from_json` refuses, and :class:`~spectra.snapshots.RunWriter` never writes)."""
    for name in ("run", "method"):
        _name(getattr(manifest, name), name)
    if not manifest.targets:
        raise SpectraError("targets: lists no target layers")
    for name, value in (
        ("format", manifest.format),
        ("every", manifest.every),
        ("rank", manifest.rank),
    ):
        if value is not None and value < 1:
            raise SpectraError(f"{name}: must be positive, got {value}")
    for name in ("steps", "resumed"):
        if any(step < 0 for step in getattr(manifest, name)):
            raise SpectraError(f"{name}: steps are never negative")
    if not set(manifest.referenced) <= set(manifest.steps):
        raise SpectraError("referenced: lists steps that steps does not")
    if manifest.referenced and manifest.format < REFERENCES_FORMAT:
        raise SpectraError(f"referenced: needs format {REFERENCES_FORMAT}, got {manifest.format}")
    if manifest.writer is not None:
        in_range(manifest.writer.pid, PID, "writer.pid")
    if manifest.distributed is not None:
        _check_distributed(manifest.distributed)
    for key in ("status", "error"):
        if not isinstance(manifest.extra.get(key, ""), str):
            raise SpectraError(f"extra.{key}: expected a string")
    for layer, target in manifest.targets.items():
        where = f"targets[{layer!r}]"
        _name(layer, where)
        if target.kind not in KINDS:
            raise SpectraError(
                f"{where}.kind: unknown layer kind {target.kind!r} "
                f"(expected one of {', '.join(KINDS)})"
            )
        if min(target.shape) < 1 or (target.rank is not None and target.rank < 1):
            raise SpectraError(
                f"{where}: shape {target.shape} and rank {target.rank} must be positive"
            )
        if target.source is not None:
            _name(target.source, f"{where}.source")
        if target.rows is not None:
            _check_rows(target.rows, target.shape[0], f"{where}.rows")
        if target.expert is not None and (target.expert < 0 or target.source is None):
            raise SpectraError(f"{where}.expert: a non-negative index into a source parameter")


def _check_distributed(record: Distributed) -> None:
    checks = (("engine", record.engine, ENGINES), ("weights", record.weights, WEIGHTS))
    for name, value, known in checks:
        if value not in known:
            raise SpectraError(f"distributed.{name}: {value!r} is not one of {', '.join(known)}")
    if record.world_size < 1:
        raise SpectraError(f"distributed.world_size: must be positive, got {record.world_size}")


def _name(value: str, where: str) -> None:
    if not value or not value.isprintable():
        raise SpectraError(at(where, f"expected a non-empty printable name, got {value!a}"))


def _check_rows(rows: Rows, count: int, where: str) -> None:
    """Row ranges must be non-empty, increasing, disjoint and select ``count`` rows."""
    stop = 0
    for start, end in rows:
        if not stop <= start < end:
            raise SpectraError(f"{where}: [{start}, {end}) is empty, overlaps or is out of order")
        stop = end
    if not rows or row_count(rows) != count:
        raise SpectraError(f"{where}: select {row_count(rows)} rows, the shape says {count}")
