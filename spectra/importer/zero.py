"""DeepSpeed ZeRO-3 checkpoints: ``global_stepN/`` with model and optimizer states per rank.

As ``engine.save_checkpoint`` (and so transformers' Trainer) writes them: ``checkpoint-N/latest``
names the tag folder, which holds ``zero_pp_rank_R_mp_rank_00_model_states.pt`` and
``[bf16_]zero_pp_rank_R_mp_rank_00_optim_states.pt`` for every data-parallel rank R. A weight is
rebuilt by DeepSpeed's own rule (``deepspeed/utils/zero_to_fp32.py``): every rank's fp32 flat
group holds, for each parameter of the group in ``param_shapes`` order, ``ceil(numel / world)``
consecutive elements; the weight is the ranks' pieces, concatenated, less the padding at the end.
A frozen parameter is rebuilt the same way from each rank's ``frozen_param_fragments``; a shared
one is its source. Every file is loaded with ``torch.load(weights_only=True, mmap=True)`` (so
only the pieces used are paged in); DeepSpeed's ``LossScaler`` / ``DynamicLossScaler`` and
``ZeroStageEnum`` in the optimizer states are admitted as inert stand-ins (no DeepSpeed code
runs, and DeepSpeed need not be installed), and any other global is refused.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from spectra.contained import FOLDER, find_inside, inside
from spectra.errors import SpectraError
from spectra.importer.tensors import _reason, tensor_sha256
from spectra.limits import read_bounded

LATEST = "latest"
TAG = re.compile(r"global_step\d+")
RANK_FILE = re.compile(r"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_(model|optim)_states\.pt")
OPTIM, MODEL = "optim", "model"


class _Inert:
    """DeepSpeed's loss scaler, read as a plain attribute holder."""


def _stage(value: int) -> int:
    """DeepSpeed's ZeroStageEnum(value), read as its number."""
    return int(value)


STAND_INS = [
    (_Inert, "deepspeed.runtime.fp16.loss_scaler.LossScaler"),
    (_Inert, "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler"),
    (_stage, "deepspeed.runtime.zero.config.ZeroStageEnum"),
]


def load_states(path: Path) -> dict:
    """A DeepSpeed states file, loaded weights-only with the stand-ins; SpectraError otherwise."""
    try:
        with torch.serialization.safe_globals(STAND_INS):
            states = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many kinds for files it refuses
        raise SpectraError(
            f"{path}: not a DeepSpeed states file that torch.load(weights_only=True) can read "
            f"({_reason(exc)})"
        ) from None
    if not isinstance(states, dict):
        raise SpectraError(f"{path}: holds {type(states).__name__}, not DeepSpeed states")
    return states


def _get(states: dict, key: str, kind, path: Path):
    value = states.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise SpectraError(f"{path}: no {key} (found {type(value).__name__})")
    return value


def _shape(value, name: str, path: Path) -> tuple[int, ...]:
    ok = isinstance(value, (torch.Size, tuple, list)) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value
    )
    if not isinstance(name, str) or not ok:
        raise SpectraError(f"{path}: parameter {name!r} has no shape ({value!r})")
    return tuple(value)


def _rank_files(folder: Path) -> dict[str, dict[int, Path]]:
    """{"model"/"optim": {rank: file}} of a tag folder; SpectraError for model parallelism."""
    found: dict[str, dict[int, Path]] = {MODEL: {}, OPTIM: {}}
    for path in sorted(folder.iterdir()):
        match = RANK_FILE.fullmatch(path.name)
        if match is None:
            continue
        rank, mp_rank, kind = int(match[1]), int(match[2]), match[3]
        if mp_rank != 0:
            raise SpectraError(
                f"{path}: model-parallel rank {mp_rank}; spectra reads ZeRO-3 checkpoints of "
                "data parallelism only (mp_rank_00)"
            )
        if rank in found[kind]:
            raise SpectraError(f"{path} and {found[kind][rank]} are both rank {rank}'s states")
        found[kind][rank] = inside(folder, path.name)  # no link outside, FIFO or loop
    return found


def _check_ranks(files: dict[int, Path], world: int, folder: Path, kind: str, source: Path) -> None:
    """SpectraError unless ``files`` are those of ranks 0 … world - 1."""
    if sorted(files) != list(range(world)):
        missing = sorted(set(range(world)) - set(files))
        extra = sorted(set(files) - set(range(world)))
        why = f"rank {missing[0]}'s is missing" if missing else f"rank {extra[0]} is one too many"
        raise SpectraError(
            f"{folder}: {source} gives a world size of {world}, but {why} ({kind} states of "
            f"ranks {sorted(files)})"
        )


def _flat_groups(states: dict, path: Path) -> tuple[int, list[torch.Tensor]]:
    """(partition count, fp32 flat groups) of a rank's optimizer states, of ZeRO stage 3."""
    optim = _get(states, "optimizer_state_dict", dict, path)
    stage = optim.get("zero_stage")
    if stage != 3:
        raise SpectraError(f"{path}: ZeRO stage {stage!r}; spectra reads ZeRO-3 checkpoints only")
    count = _get(optim, "partition_count", int, path)
    groups = _get(optim, "fp32_flat_groups", list, path)
    if not all(isinstance(g, torch.Tensor) and g.dim() == 1 and g.is_floating_point()
               for g in groups):  # fmt: skip
        raise SpectraError(f"{path}: fp32_flat_groups is not a list of 1-D float tensors")
    return count, groups


class ZeroTensors:
    """The parameters of a ZeRO-3 checkpoint, by name; each rebuilt from its pieces when read."""

    def __init__(self, folder: Path, meta_files: list[Path]):
        self.where = folder
        files = _rank_files(folder)
        if not files[OPTIM]:
            raise SpectraError(f"{folder}: no DeepSpeed optimizer states (*_optim_states.pt)")
        optim = {rank: _flat_groups(load_states(f), f) for rank, f in files[OPTIM].items()}
        first = min(optim)
        self.world = world = optim[first][0]
        for rank, (count, _) in optim.items():
            if count != world:
                raise SpectraError(f"{files[OPTIM][rank]}: partition_count {count}, but "
                                   f"{files[OPTIM][first]}'s is {world}")  # fmt: skip
        _check_ranks(files[OPTIM], world, folder, "optimizer", files[OPTIM][first])
        _check_ranks(files[MODEL], world, folder, "model", files[OPTIM][first])
        self.optim_files = [files[OPTIM][r] for r in range(world)]
        self.groups = [optim[r][1] for r in range(world)]
        self.model_files = [files[MODEL][r] for r in range(world)]
        self.models = [load_states(f) for f in self.model_files]
        self.model_file = self.model_files[0]
        self.meta_files = [*meta_files, *self.model_files]
        # name → (shape, flat group or None if frozen, first element in the group on each rank)
        self.layout: dict[str, tuple[tuple[int, ...], int | None, int]] = {}
        self._trainable()
        self._frozen()
        self._shared()
        self.shapes = {name: shape for name, (shape, _, _) in self.layout.items()}
        self.files = dict.fromkeys(self.layout, self.model_file)  # for messages: param_shapes
        self.read_files: list[Path] = []  # optimizer-states files read from, in order
        self.digests: dict[Path, dict[str, str]] = {}  # rank file → {parameter: sha256 of piece}

    def _part(self, numel: int) -> int:
        return math.ceil(numel / self.world)

    def _trainable(self) -> None:
        """Each optimized parameter's group and place in every rank's flat group."""
        states, path = self.models[0], self.model_file
        dp_world = states.get("dp_world_size", self.world)
        if dp_world != self.world:
            raise SpectraError(f"{path}: dp_world_size {dp_world!r}, but {self.world} ranks saved")
        groups = _get(states, "param_shapes", list, path)
        sizes = [g.numel() for g in self.groups[0]]
        for rank_groups, file in zip(self.groups, self.optim_files, strict=True):
            if [g.numel() for g in rank_groups] != sizes:
                raise SpectraError(
                    f"{file}: flat groups of {[g.numel() for g in rank_groups]} elements, but "
                    f"rank 0's hold {sizes}"
                )
        if len(groups) != len(sizes):
            raise SpectraError(f"{path}: {len(groups)} param_shapes groups for {len(sizes)} flat "
                               f"groups in {self.optim_files[0]}")  # fmt: skip
        for index, (shapes, size) in enumerate(zip(groups, sizes, strict=True)):
            if not isinstance(shapes, dict):
                raise SpectraError(f"{path}: param_shapes group {index} is not a dict")
            at = 0
            for name, value in shapes.items():
                shape = _shape(value, name, path)
                self.layout[name] = (shape, index, at)
                at += self._part(math.prod(shape))
            if at != size:
                raise SpectraError(
                    f"{path}: param_shapes group {index} needs {at} elements per rank, but the "
                    f"flat group holds {size} (consumed {at * self.world} of {size * self.world})"
                )

    def _frozen(self) -> None:
        """Each frozen parameter, its fragments checked on every rank."""
        shapes = self.models[0].get("frozen_param_shapes") or {}
        if not isinstance(shapes, dict):
            raise SpectraError(f"{self.model_file}: frozen_param_shapes is not a dict")
        for name, value in shapes.items():
            shape = _shape(value, name, self.model_file)
            if name in self.layout:
                raise SpectraError(f"{self.model_file}: {name} is both trained and frozen")
            for states, file in zip(self.models, self.model_files, strict=True):
                piece = (states.get("frozen_param_fragments") or {}).get(name)
                if not isinstance(piece, torch.Tensor) or piece.shape != (
                    self._part(math.prod(shape)),
                ):
                    raise SpectraError(
                        f"{file}: no fragment of {self._part(math.prod(shape))} elements for "
                        f"frozen parameter {name}"
                    )
            self.layout[name] = (shape, None, 0)

    def _shared(self) -> None:
        """Shared parameters: each is its source's tensor."""
        shared = self.models[0].get("shared_params") or {}
        if not isinstance(shared, dict):
            raise SpectraError(f"{self.model_file}: shared_params is not a dict")
        for alias, source in shared.items():
            if isinstance(alias, str) and source in self.layout:
                self.layout.setdefault(alias, self.layout[source])

    def read(self, name: str) -> torch.Tensor:
        """Parameter ``name`` in fp32, rebuilt from every rank's piece (only those are read)."""
        shape, group, at = self.layout[name]
        numel = math.prod(shape)
        part = self._part(numel)
        if group is None:  # frozen: each rank's fragment, from its model states
            pieces = [states["frozen_param_fragments"][name] for states in self.models]
        else:
            pieces = [groups[group][at : at + part] for groups in self.groups]
            for file, piece in zip(self.optim_files, pieces, strict=True):
                if file not in self.read_files:
                    self.read_files.append(file)
                self.digests.setdefault(file, {})[name] = tensor_sha256(piece)
        return torch.cat(pieces)[:numel].view(shape)


def zero_folder(folder: Path) -> Path | None:
    """The tag folder of a checkpoint folder: the one ``latest`` names, else its only
    ``global_stepN/``, or ``folder`` itself when it holds rank files; None if there is none."""
    if any(RANK_FILE.fullmatch(p.name) for p in folder.iterdir()):
        return folder
    latest = find_inside(folder, LATEST)
    if latest is not None:
        try:
            tag = read_bounded(latest).decode().strip()
        except UnicodeDecodeError as exc:
            raise SpectraError(f"{latest}: not a readable tag ({exc})") from None
        if not tag or Path(tag).name != tag or not (folder / tag).is_dir():
            raise SpectraError(f"{latest}: names {tag!r}, which is not a folder in {folder}")
        return inside(folder, tag, FOLDER)
    tags = sorted(p for p in folder.iterdir() if p.is_dir() and TAG.fullmatch(p.name))
    if len(tags) > 1:
        raise SpectraError(f"{folder}: {len(tags)} global_step folders and no {LATEST} file")
    return inside(folder, tags[0].name, FOLDER) if tags else None


def open_zero(folder: Path) -> ZeroTensors | None:
    """The parameters of the ZeRO-3 checkpoint in ``folder``, checked; None if it holds none."""
    tag = zero_folder(folder)
    if tag is None:
        return None
    latest = find_inside(folder, LATEST)
    return ZeroTensors(tag, [latest] if tag != folder and latest is not None else [])
