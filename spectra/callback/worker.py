"""The inline metrics worker: computes the metrics of a run directory into its Parquet file as
snapshots land, in a ``python -m spectra.follow`` subprocess (one torch thread) or a thread
(which loads the engine; the training side imports none of it otherwise).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

WORKERS = ("process", "thread")


class InlineWorker:
    """Computes metrics as snapshots land, in a subprocess (default) or a thread."""

    def __init__(self, run_dir: Path, poll: float, runs_in: str):
        self.error: BaseException | None = None
        if runs_in == "process":
            cmd = [sys.executable, "-m", "spectra.follow", str(run_dir), "--quiet",
                   "--poll", str(poll), "--parent", str(os.getpid()), "--threads", "1"]  # fmt: skip
            root = str(Path(__file__).resolve().parents[2])  # spectra importable from source
            path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
            # its own session: a Ctrl-C on the terminal stops the training, which stops the worker
            self.process = subprocess.Popen(
                cmd, env=os.environ | {"PYTHONPATH": path}, start_new_session=True
            )
        else:
            self.thread = threading.Thread(target=self._run, args=(run_dir, poll), daemon=True)
            self.thread.start()

    def _run(self, run_dir: Path, poll: float) -> None:
        from spectra.follow import compute_until_finished

        try:
            compute_until_finished(run_dir, poll)
        except BaseException as exc:  # reported by wait()
            self.error = exc

    def wait(self, stop: bool = False) -> str | None:
        """Wait for the worker (terminate it when ``stop``); a failure message or None."""
        if hasattr(self, "process"):
            if stop:
                self.process.terminate()
            code = self.process.wait()
            return None if code == 0 or stop else f"exit code {code}"
        self.thread.join(None if not stop else 0)
        return None if self.error is None else str(self.error)
