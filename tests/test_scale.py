"""Scale-out: the engine on a Dask LocalCluster, a worker killed mid-run, the GPU path."""

import os
import signal
import threading
import time

import pandas as pd
import pytest
import torch

from spectra.engine import Engine, Settings, compute_run
from spectra.errors import SpectraError
from spectra.snapshots import Manifest, RunWriter, Target
from spectra.store import read_run

pytestmark = pytest.mark.slow  # multi-process, training or long runs: not in make test-fast

distributed = pytest.importorskip("distributed")


def many_matrices(path, layers=6, steps=6, size=160, seed=0):
    """A dense run with enough (step, layer) tasks to interrupt."""
    g = torch.Generator().manual_seed(seed)
    names = [f"model.layers.{i}.self_attn.v_proj" for i in range(layers)]
    w0 = {name: torch.randn(size, size, generator=g) for name in names}
    targets = {name: Target("dense", (size, size)) for name in names}
    writer = RunWriter(path / "ft", Manifest(run="ft", method="ft", targets=targets))
    for step in range(steps):
        writer.write_step(step, {n: {"weight": w + 0.05 * step * w.sin()} for n, w in w0.items()})
    writer.finish()
    return path / "ft"


@pytest.fixture(scope="module")
def cluster():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
        ) as local,
        distributed.Client(local) as client,
    ):
        yield client


def test_dask_rows_equal_local_rows(tmp_path, cluster):
    client = cluster
    run_dir = many_matrices(tmp_path)
    want = read_run(compute_run(run_dir, tmp_path / "local.parquet"))[0]
    engine = Engine(run_dir, tmp_path / "dask.parquet", executor=client.get_executor())
    assert engine.update() == len(want)
    pd.testing.assert_frame_equal(read_run(tmp_path / "dask.parquet")[0], want)


def test_killed_worker_loses_no_rows(tmp_path, cluster):
    client = cluster
    run_dir = many_matrices(tmp_path, layers=8, steps=8, size=220)
    out = tmp_path / "dask.parquet"
    engine = Engine(run_dir, out, executor=client.get_executor(), write_every=0)
    worker = threading.Thread(target=engine.update)
    worker.start()
    deadline = time.monotonic() + 60
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    written_at_kill = len(read_run(out)[0])
    pids = client.run(os.getpid)
    os.kill(next(iter(pids.values())), signal.SIGKILL)
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert written_at_kill < 64, "the run finished before the worker could be killed"
    rows = read_run(out)[0]
    assert len(rows) == 64 and not rows.duplicated(["step", "layer"]).any()
    assert Engine(run_dir, out).update() == 0  # a re-run finds nothing left to do
    want = read_run(compute_run(run_dir, tmp_path / "local.parquet"))[0]
    pd.testing.assert_frame_equal(rows, want)


def test_interrupted_run_continues_where_it_stopped(tmp_path, cluster):
    client = cluster
    run_dir = many_matrices(tmp_path)
    out = tmp_path / "dask.parquet"
    Engine(run_dir, out, executor=client.get_executor()).update()
    rows, meta = read_run(out)
    from spectra.store import write_rows

    write_rows(out, rows.iloc[: len(rows) // 3], meta)  # what survived a crash
    engine = Engine(run_dir, out, executor=client.get_executor())
    assert engine.update() == len(rows) - len(rows) // 3
    pd.testing.assert_frame_equal(read_run(out)[0], rows)


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    run_dir = many_matrices(tmp_path, layers=1, steps=2, size=8)
    with pytest.raises(SpectraError, match="no CUDA GPU"):
        Engine(run_dir, settings=Settings(device="cuda"))
    with pytest.raises(SpectraError, match="unknown device"):
        Engine(run_dir, settings=Settings(device="tpu"))
