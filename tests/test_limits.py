"""Paths contained, budgets before allocation, bounded regular expressions (issue 17, part B):
what must still be accepted, and the rules checked against independent definitions.

The refusals themselves are rows of the bad-input table (test_bad_input.py) and the fuzz tests.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from import_inputs import CATASTROPHIC, make_import_inputs
from runmaker import make_run, parallel

from spectra.architectures.fused import checked
from spectra.contained import FOLDER, find_inside, inside, source
from spectra.errors import SpectraError
from spectra.figures.panels import parse_blocks
from spectra.limits import INT64, MAX_JSON_DEPTH, check_epochs, loads, read_json
from spectra.snapshots import open_run
from spectra.timelimit import within

NAME = "model.layers.0.self_attn.q_proj"


# --- files inside their folder -------------------------------------------------------------


def hf_cache_snapshot(root: Path, files: dict[str, bytes]) -> Path:
    """A Hugging Face cache repository: snapshots/<rev>/<file> → ../../blobs/<digest>."""
    repo = root / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "0123abcd"
    for name, data in files.items():
        blob = repo / "blobs" / f"blob-{len(name)}-{abs(hash(name))}"
        blob.write_bytes(data)
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).symlink_to(os.path.relpath(blob, (snapshot / name).parent))
    return snapshot


def test_inside_follows_links_within_the_folder_and_the_hf_cache_only(tmp_path):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.json").write_text("{}")
    (folder / "b.json").symlink_to("sub/a.json")
    assert inside(folder, "b.json") == folder / "b.json"
    assert inside(folder, "sub", FOLDER) == folder / "sub"
    (tmp_path / "secret").write_text("{}")
    (folder / "out.json").symlink_to("../secret")
    for name, why in [("../secret", "not a name inside"), (str(tmp_path / "secret"), "not a name"),
                      ("out.json", "outside"), ("", "not a name"), ("nope", "no such file"),
                      ("sub", "a folder, expected a file")]:  # fmt: skip
        with pytest.raises(SpectraError, match=why):
            inside(folder, name)
    assert find_inside(folder, "nope") is None
    snapshot = hf_cache_snapshot(tmp_path / "hub", {"config.json": b"{}", "sub/x.json": b"[]"})
    assert read_json(inside(snapshot, "config.json")) == {}
    assert read_json(inside(snapshot / "sub", "x.json")) == []


def test_fifos_devices_loops_and_dangling_links_are_refused_without_opening(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # opened for reading, it would wait for a writer forever
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "dangling").symlink_to("gone")
    (tmp_path / "zero").symlink_to("/dev/zero")
    for name, why in [("fifo", "a FIFO"), ("loop", "a symlink loop"),
                      ("dangling", "a symlink to nothing"), ("zero", "a device")]:  # fmt: skip
        with pytest.raises(SpectraError, match=why):
            inside(tmp_path, name)
        with pytest.raises(SpectraError, match=why):
            source(tmp_path / name)
        with pytest.raises(SpectraError):
            read_json(tmp_path / name)


def test_a_model_in_the_hf_cache_imports_like_the_same_folder(tmp_path):
    from spectra.importer import import_run

    inputs = make_import_inputs(tmp_path / "in")
    files = {p.name: p.read_bytes() for p in (inputs / "sharded").iterdir()}
    snapshot = hf_cache_snapshot(tmp_path / "hub", files)
    runs = [import_run([folder], inputs / "base", out=tmp_path / "runs", name=name)
            for folder, name in ((inputs / "sharded", "plain"), (snapshot, "cached"))]  # fmt: skip
    plain, cached = (open_run(r) for r in runs)
    assert plain.steps == cached.steps == [0, 1] and plain.layers == cached.layers
    for step in plain.steps:
        for layer in plain.layers:
            assert torch.equal(plain.weight(step, layer), cached.weight(step, layer))


# --- budgets ---------------------------------------------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_json_depth_is_bounded_by_an_independent_count():
    assert loads(nested(MAX_JSON_DEPTH), "x") is not None
    for depth in (MAX_JSON_DEPTH + 1, 900, 100_000):
        with pytest.raises(SpectraError, match=f"nested more than {MAX_JSON_DEPTH} deep"):
            loads(nested(depth), "x")
    wide = json.dumps({"a": [[1]] * 1000, "b": {"c": {"d": [2]}}})
    assert loads(wide, "x") == json.loads(wide)


@given(
    st.lists(st.tuples(st.integers(-3, 12), st.integers(-3, 12)), max_size=6), st.integers(0, 10)
)
def test_row_coverage_on_ranges_equals_the_list_of_every_row(spans, out_features):
    slices = {"q": tuple(spans)}
    every_row = sorted(i for a, b in spans for i in range(a, b))
    if every_row == list(range(out_features)):
        assert checked(slices, out_features, "x") is slices
    else:
        with pytest.raises(SpectraError, match="do not add up"):
            checked(slices, out_features, "x")


def test_layer_ranges_are_never_expanded():
    assert parse_blocks("2, 5-7") == [range(2, 3), range(5, 8)]
    assert parse_blocks("0-1000000000000000000")[0][-1] == 10**18


def test_plot_with_a_range_far_beyond_the_blocks_draws_them_all(tmp_path, cli):
    path = make_run(tmp_path, "a", "ft", parallel(0.1))
    code, out, err = cli(["plot", path, "--layers", "0-1000000000", "--out", tmp_path / "figs"])
    assert code == 0, err
    assert "figure2.html" in out


def test_pandas_metadata_in_run_and_log_files_is_not_read(tmp_path, cli):
    """spectra writes no pandas metadata: garbage or deep JSON there is never parsed."""
    path = make_run(tmp_path, "a", "ft", parallel(0.1))
    for file in (path, tmp_path / "a" / "train_log.parquet"):
        table = pq.read_table(file)
        meta = (table.schema.metadata or {}) | {b"pandas": nested(10_000).encode()}
        pq.write_table(table.replace_schema_metadata(meta), file)
    code, out, err = cli(["analyze", path, "--format", "csv"])
    assert code == 0 and "\na,ft,all," in out, err
    code, out, err = cli(["plot", path, "--figure", "3", "--out", tmp_path / "figs"])
    assert code == 0 and "figure3.html" in out, err


# --- regular expressions under a time limit --------------------------------------------------


def catastrophic() -> bool:
    return re.fullmatch(CATASTROPHIC, NAME) is not None


def busy(seconds: float) -> None:
    """Spend ``seconds`` of CPU time."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_a_catastrophic_regex_is_stopped_in_the_main_thread_and_the_callers_timer_kept():
    fired = []
    previous = signal.signal(signal.SIGPROF, lambda *a: fired.append(time.process_time()))
    start = time.process_time()
    signal.setitimer(signal.ITIMER_PROF, 1.5)  # the caller's own timer: 1.5 s of CPU from now
    try:
        with pytest.raises(SpectraError, match=r"took longer than 0\.5 s"):
            within(0.5, "matching", catastrophic)
        assert time.process_time() - start < 1.2
        assert within(0.5, "matching", lambda: re.fullmatch(".*q_proj", NAME) is not None)
        assert not fired
        busy(1.5)
        assert fired and 1.4 < fired[0] - start < 2.0
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def test_a_catastrophic_regex_is_stopped_off_the_main_thread():
    answers = []

    def run():
        try:
            answers.append(within(0.5, "matching", catastrophic))
        except SpectraError as exc:
            answers.append(str(exc))
        answers.append(within(5, "matching", lambda: {"r": [4, 8.0]}))

    start = time.monotonic()
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert answers == ["matching took longer than 0.5 s; refusing it", {"r": [4, 8.0]}]
    assert time.monotonic() - start < 10


def test_an_adapter_with_patterns_gets_peft_s_ranks_and_scales(tmp_path):
    """Layers built from the literal per-module config have the rank and scaling that peft
    gives each module of the whole model under the config's regular expressions."""
    from peft import LoraConfig, get_peft_model
    from tiny_models import base_model

    from spectra.importer import import_run

    inputs = make_import_inputs(tmp_path / "in")
    config = json.loads((inputs / "lora" / "adapter_config.json").read_text())
    patterns = {"target_modules": r".*\.(q_proj|v_proj)", "rank_pattern": {"v_proj": 4},
                "alpha_pattern": {r"layers\.1\..*q_proj": 16}, "use_rslora": True}  # fmt: skip
    (inputs / "lora" / "adapter_config.json").write_text(json.dumps(config | patterns))
    run = import_run([inputs / "lora"], inputs / "base", out=tmp_path / "runs", name="run")
    layers = json.loads((run / "manifest.json").read_text())["extra"]["import"]["layers"]
    peft = get_peft_model(base_model("llama"), LoraConfig(r=4, lora_alpha=8, **patterns))
    want = {
        name.removeprefix("base_model.model."): {"r": m.r["default"], "scale": m.scaling["default"]}
        for name, m in peft.named_modules()
        if hasattr(m, "scaling") and name.endswith(("q_proj", "v_proj"))
    }
    assert layers == want
    assert len({v["scale"] for v in want.values()}) == 2  # the alpha pattern applies to one


@given(
    epochs=st.floats(min_value=1e-3, max_value=1e20) | st.sampled_from([2.0**63, 2.0**62]),
    batches=st.integers(1, 10**6),
)
def test_check_epochs_refuses_exactly_the_runs_beyond_64_bits(epochs, batches):
    """check_epochs refuses iff the recipes' step count, ⌈epochs · batches⌉, exceeds int64."""
    steps = math.ceil(epochs * batches)
    if steps > INT64[1]:
        with pytest.raises(SpectraError, match="than fit 64 bits"):
            check_epochs(epochs, batches)
    else:
        assert check_epochs(epochs, batches) == epochs
