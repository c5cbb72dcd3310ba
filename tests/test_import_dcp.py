"""spectra import of torch.distributed.checkpoint folders: accelerate FSDP and plain dcp.save.

Two real 2-rank trainings (gloo, CPU; built once per module by ``checkpoint_train.py``):
transformers' Trainer + accelerate FSDP saving ``SHARDED_STATE_DICT`` checkpoints, and a plain
FSDP2 loop calling ``dcp.save``. The imported weights must be bit-identical to the full weights
that torch itself gives for the same checkpoint (``get_model_state_dict(full_state_dict=True)``
at save time, and DCP's own loader on the files), and the rows those of spectra.drift on them.
Only the target chunks' bytes may be read; a ``.metadata`` pickle carrying a payload is refused
unrun.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from helpers import fifo, loop, moved_out
from safetensors.torch import load_file
from sharded import (
    LAYERS,
    STEPS,
    TARGETS,
    assert_one_error_line,
    assert_refused,
    assert_rows_equal_tracked,
    assert_rows_from_weights,
    stored,
    train_sharded,
)
from tiny_models import EXPERT_PARAMS, base_model
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

import spectra.importer.dcp as dcp_module
from spectra.capture import split_expert
from spectra.errors import SpectraError
from spectra.importer import import_run
from spectra.snapshots import open_run

PICKLES = ("optimizer_0", "scheduler.pt", "rng_state_0.pth", "rng_state_1.pth")


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory) -> Path:
    """Trainer + accelerate FSDP, SHARDED_STATE_DICT: fsdp/checkpoint-{2,4}/."""
    return train_sharded("fsdp", tmp_path_factory.mktemp("fsdp"))


@pytest.fixture(scope="module")
def plain_moe(tmp_path_factory) -> Path:
    """An FSDP2 loop calling dcp.save on a tiny Mixtral: dcp/step-{2,4}/, 3-D experts sharded."""
    return train_sharded("dcp-moe", tmp_path_factory.mktemp("dcp-moe"))


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """An FSDP2 loop calling dcp.save: dcp/step-{2,4}/."""
    return train_sharded("dcp", tmp_path_factory.mktemp("dcp"))


def dcp_own(folder: Path) -> dict[str, torch.Tensor]:
    """DCP's own load of every tensor in a folder, accelerate's ``model`` nesting undone."""
    loaded = _load_state_dict_from_keys(checkpoint_id=str(folder))
    return loaded.get("model", loaded) if isinstance(loaded.get("model"), dict) else loaded


def check_against_torch(run_dir: Path, root: Path, folders: dict[int, Path], layers) -> None:
    """Stored weights bit-identical to torch's gather and to DCP's own loader; rows = drift."""
    base = load_file(root / "base" / "model.safetensors")
    weights = {0: {layer: base[f"{layer}.weight"] for layer in layers}}
    for step, folder in folders.items():
        gathered = load_file(root / "reference" / f"step-{step}.safetensors")
        own = dcp_own(folder)
        files = stored(run_dir, step)
        for layer in layers:
            key = f"{layer}.weight"
            got = files[f"{layer}/weight"]
            assert got.dtype == gathered[key].dtype == own[key].dtype == torch.float32
            assert torch.equal(got, gathered[key]) and torch.equal(got, own[key]), (step, layer)
            assert not torch.equal(got, base[key])  # training moved it
        weights[step] = {layer: gathered[f"{layer}.weight"] for layer in layers}
    assert_rows_from_weights(run_dir, weights)


@pytest.mark.slow
def test_trainer_fsdp_sharded_checkpoints_equal_torchs_full_weights(fsdp, tmp_path):
    run_dir = import_run([fsdp / "fsdp"], fsdp / "base", out=tmp_path)
    run = open_run(run_dir)
    assert run.steps == [0, *STEPS] and run.layers == LAYERS and run.manifest.method == "ft"
    folders = {s: fsdp / "fsdp" / f"checkpoint-{s}" / "pytorch_model_fsdp_0" for s in STEPS}
    check_against_torch(run_dir, fsdp, folders, LAYERS)
    assert_rows_equal_tracked(run_dir, fsdp)  # the same training, tracked by SpectraCallback
    provenance = run.manifest.extra["import"]
    files = provenance["steps"]["4"]["files"]
    assert {Path(f).name for f in files} == {".metadata", "__0_0.distcp", "__1_0.distcp"}
    assert all(set(r) == {"pieces"} for f, r in files.items() if f.endswith(".distcp"))
    read = [f for step in provenance["steps"].values() for f in step["files"]]
    assert not any(pickle in f for f in read for pickle in PICKLES)
    assert list(provenance["train_log"]) == [str(fsdp / "fsdp" / "checkpoint-4" /
                                                 "trainer_state.json")]  # fmt: skip
    assert (run_dir / "train_log.parquet").is_file()


@pytest.mark.slow
def test_compare_reads_fsdp_checkpoints(fsdp, tmp_path, cli):
    code, out, err = cli(["compare", fsdp / "base", fsdp / "fsdp", "--out", tmp_path])
    assert code == 0, err
    assert "Summary" in out and (tmp_path / "fsdp.parquet").is_file()
    folders = {s: fsdp / "fsdp" / f"checkpoint-{s}" / "pytorch_model_fsdp_0" for s in STEPS}
    check_against_torch(tmp_path / "fsdp", fsdp, folders, LAYERS)


@pytest.mark.slow
def test_plain_dcp_folders_equal_torchs_full_weights(plain, tmp_path):
    """FSDP2 shards of the 33-row o_proj are 17 + 16 rows: uneven chunks assemble too."""
    folders = {s: plain / "dcp" / f"step-{s}" for s in STEPS}
    layers = [f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in (*TARGETS, "o_proj")]
    run_dir = import_run(list(folders.values()), plain / "base", out=tmp_path, name="plain",
                         steps=list(STEPS), targets=[*TARGETS, "o_proj"])  # fmt: skip
    assert sorted(open_run(run_dir).layers) == sorted(layers)
    check_against_torch(run_dir, plain, folders, layers)
    tracked = import_run(list(folders.values()), plain / "base", out=tmp_path, name="qv",
                         steps=list(STEPS))  # fmt: skip
    assert_rows_equal_tracked(tracked, plain)  # the same loop, tracked by a Tracker


class Recorded:
    """A file opened for reading that records each read: (file, first byte, length)."""

    def __init__(self, path, reads: list):
        self.path, self.file, self.reads = Path(path), open(path, "rb"), reads  # noqa: SIM115

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def seek(self, *args):
        return self.file.seek(*args)

    def _record(self, method, size):
        start = self.file.tell()
        data = method(size)
        self.reads.append((self.path, start, len(data)))
        return data

    def read(self, size=-1):
        return self._record(self.file.read, size)

    def readline(self, size=-1):
        return self._record(self.file.readline, size)


@pytest.mark.slow
def test_only_the_target_chunks_are_read(fsdp, tmp_path, monkeypatch):
    reads: list[tuple[Path, int, int]] = []
    monkeypatch.setattr(dcp_module, "open", lambda path, mode: Recorded(path, reads), raising=False)
    import_run([fsdp / "fsdp"], fsdp / "base", out=tmp_path)
    monkeypatch.undo()
    want = []
    for step in STEPS:
        folder = fsdp / "fsdp" / f"checkpoint-{step}" / "pytorch_model_fsdp_0"
        metadata = FileSystemReader(str(folder)).read_metadata()  # torch's own reader
        for index, info in metadata.storage_data.items():
            if index.fqn.removeprefix("model.") in {f"{layer}.weight" for layer in LAYERS}:
                want.append((folder / info.relative_path, info.offset, info.length))
    shards = [r for r in reads if r[0].suffix == ".distcp"]
    assert sorted(shards) == sorted(want) and len(want) == 2 * len(LAYERS) * len(STEPS)
    metadata_reads = [r for r in reads if r[0].name == ".metadata"]
    assert sum(n for _, _, n in metadata_reads) == sum(
        (fsdp / "fsdp" / f"checkpoint-{s}" / "pytorch_model_fsdp_0" / ".metadata").stat().st_size
        for s in STEPS
    )
    size = sum(f.stat().st_size for f in (fsdp / "fsdp").rglob("*") if f.is_file())
    model = sum(f.stat().st_size for f in (fsdp / "fsdp").rglob("*.distcp")
                if f.parent.name == "pytorch_model_fsdp_0")  # fmt: skip
    read = sum(n for _, _, n in reads)
    print(f"\nDCP import read {read} of {model} model-shard bytes ({size} in the checkpoints)")


# --- single process: compressed chunks, payloads ---------------------------------------------


def single_dcp(root: Path, **writer) -> Path:
    """A tiny Llama's base (save_pretrained) and its perturbed weights as a one-rank DCP folder."""
    model = base_model("llama")
    model.save_pretrained(root / "base")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    folder = root / "ckpt"
    dcp.save(state, storage_writer=dcp.FileSystemWriter(folder, **writer), no_dist=True)
    return folder


def test_zstd_compressed_chunks_are_decompressed_by_torchs_own_transform(tmp_path):
    from torch.distributed.checkpoint._extension import ZStandard

    folder = single_dcp(tmp_path, _extensions=[ZStandard()])
    metadata = FileSystemReader(str(folder)).read_metadata()
    assert all(i.transform_descriptors == ["stream.zstd/1"] for i in metadata.storage_data.values())
    run = open_run(import_run([folder], tmp_path / "base", out=tmp_path / "runs", name="z"))
    own = dcp_own(folder)
    for layer in run.layers:
        assert torch.equal(stored(run.path, 1)[f"{layer}/weight"], own[f"{layer}.weight"])


class Payload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def rewrite_metadata(folder: Path, change) -> None:
    """Load a folder's metadata with plain pickle (the test's own file), change it, save it."""
    path = folder / ".metadata"
    metadata = pickle.loads(path.read_bytes())
    change(metadata)
    path.write_bytes(pickle.dumps(metadata))


def test_the_payloads_are_live(tmp_path):
    """Plain pickle would run them: the refusals below are real."""
    for n, wrap in enumerate((lambda p: p, lambda p: {"planner": [p]})):
        marker = tmp_path / f"ran-{n}"
        pickle.loads(pickle.dumps(wrap(Payload(marker))))
        assert marker.exists()


@pytest.mark.parametrize("where", ["whole file", "inside the metadata"])
def test_a_metadata_payload_is_refused_and_never_run(tmp_path, cli, capsys, where):
    folder = single_dcp(tmp_path)
    marker = tmp_path / "payload-ran"
    if where == "whole file":
        (folder / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    else:
        rewrite_metadata(folder, lambda m: setattr(m, "planner_data", {"x": Payload(marker)}))
    with pytest.raises(SpectraError, match=r"refusing to unpickle posix\.system") as exc:
        import_run([folder], tmp_path / "base", out=tmp_path / "runs")
    assert str(folder / ".metadata") in str(exc.value)
    out = tmp_path / "cli-runs"
    capsys.readouterr()  # what making the checkpoint printed
    result = cli(["import", folder, "--base", tmp_path / "base", "--out", out])
    assert_one_error_line(result, "refusing to unpickle posix.system", out)
    assert not marker.exists()


# --- bad input: one error line each ------------------------------------------------------------

Q = "model.layers.0.self_attn.q_proj.weight"


def chunks(metadata, key: str = Q):
    return metadata.state_dict_metadata[key].chunks


def info(metadata, chunk: int = 1, key: str = Q):
    from torch.distributed.checkpoint.metadata import MetadataIndex

    return metadata.storage_data[MetadataIndex(key, chunks(metadata, key)[chunk].offsets)]


def shift(metadata) -> None:
    chunks(metadata)[1].offsets = torch.Size([40, 0])


def overlap(metadata) -> None:
    first = chunks(metadata)[0]
    chunks(metadata)[1].offsets, chunks(metadata)[1].sizes = first.offsets, first.sizes


def blob(folder: Path, data: bytes, metadata) -> None:
    """Point the second chunk of Q at ``data``, appended to its shard."""
    record = info(metadata)
    shard = folder / record.relative_path
    record.offset, record.length = shard.stat().st_size, len(data)
    with open(shard, "ab") as f:
        f.write(data)


def torch_bytes(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def metadata_row(change):
    return lambda folder, marker: rewrite_metadata(folder, change)


def blob_row(make):
    return lambda folder, marker: rewrite_metadata(folder, lambda m: blob(folder, make(marker), m))


BAD = {
    "missing shard": (lambda f, m: (f / "__1_0.distcp").unlink(), "shard __1_0.distcp is missing"),
    "truncated shard": (lambda f, m: os.truncate(f / "__1_0.distcp", 1000), "which has 1000"),
    "not a pickle": (lambda f, m: (f / ".metadata").write_bytes(b"\x80\x04not a pickle"),
                     "not a readable DCP metadata file"),
    "not metadata": (lambda f, m: (f / ".metadata").write_bytes(pickle.dumps({"a": 1})),
                     "not a DCP metadata file"),
    "payload": (lambda f, m: (f / ".metadata").write_bytes(pickle.dumps(Payload(m))),
                "refusing to unpickle posix.system"),
    "outside shape": (metadata_row(shift), "lies outside its shape [48, 33]"),
    "overlap": (metadata_row(overlap), "its chunks overlap"),
    "element count": (metadata_row(lambda m: setattr(chunks(m)[1], "sizes", torch.Size([8, 33]))),
                      "its chunks hold 1056 elements"),
    "dtype": (metadata_row(lambda m: setattr(m.state_dict_metadata[Q].properties, "dtype",
                                             torch.float16)),
              "holds torch.float32, but the metadata says torch.float16"),
    "no record": (metadata_row(lambda m: m.storage_data.pop(next(
        i for i in m.storage_data if i.fqn == Q and i.offset[0] > 0))), "no storage record"),
    "shard linked out": (lambda f, m: moved_out(f / "__1_0.distcp"), "links to"),
    "shard a FIFO": (lambda f, m: fifo(f / "__1_0.distcp"), "a FIFO"),
    "metadata a loop": (lambda f, m: loop(f / ".metadata"), "a symlink loop"),
    "escape": (metadata_row(lambda m: setattr(info(m), "relative_path", "../x.distcp")),
               "is not a file name"),
    "transform": (metadata_row(lambda m: setattr(info(m), "transform_descriptors",
                                                 ["stream.gzip/1"])),
                  "cannot undo its transforms ['stream.gzip/1']"),
    "garbage chunk": (blob_row(lambda m: b"\0" * 1000), "not a tensor that torch.load"),
    "chunk payload": (blob_row(lambda m: torch_bytes({"x": Payload(m)})),
                      "unsupported GLOBAL posix.system"),
    "chunk shape": (blob_row(lambda m: torch_bytes(torch.zeros(3, 3))),
                    "holds [3, 3], not its chunk of [24, 33]"),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD))
def test_bad_dcp_input_is_one_error_line(plain, tmp_path, cli, capsys, case):
    damage, names = BAD[case]
    capsys.readouterr()
    assert_refused(cli, plain / "dcp" / "step-4", plain / "base", damage, names, tmp_path)


@pytest.mark.slow
def test_plain_dcp_experts_equal_torchs_full_weights(plain_moe, tmp_path):
    """Each 3-D expert parameter, sharded over the ranks along its experts, assembled from its
    chunks: every expert at every step bit-identical to torch's full gather at save time."""
    folders = [plain_moe / "dcp" / f"step-{step}" for step in STEPS]
    run = open_run(import_run(folders, plain_moe / "base", out=tmp_path, steps=list(STEPS),
                              targets=list(EXPERT_PARAMS)))  # fmt: skip
    assert run.steps == [0, *STEPS] and len(run.layers) == 16  # 2 blocks × 2 stacks × 4
    for step in STEPS:
        reference = load_file(plain_moe / "reference" / f"step-{step}.safetensors")
        for layer in run.layers:
            stack, expert = split_expert(layer)
            assert torch.equal(run.weight(step, layer), reference[stack][expert].double()), layer
