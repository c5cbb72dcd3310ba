"""The spectra command line, with every (step, layer) task the engine starts logged (one line per
task, in the file $SPECTRA_TASK_LOG), in this process and in worker processes alike, and made
to last at least $SPECTRA_TASK_SECONDS (so that a test's signal finds the run still going,
however the machine schedules the test):

    SPECTRA_TASK_LOG=tasks.log python tests/counted_cli.py compute RUN --workers 2
"""

from __future__ import annotations

import os
import sys
import time

import spectra.engine.incremental as incremental
from spectra.cli import main
from spectra.engine.row_metrics import matrix_task


def counted_task(*args):
    """``matrix_task``, its start logged first."""
    with open(os.environ["SPECTRA_TASK_LOG"], "a") as log:
        log.write(f"{args[1]}\n")
    time.sleep(float(os.environ.get("SPECTRA_TASK_SECONDS", "0")))
    return matrix_task(*args)


if __name__ == "__main__":
    incremental.matrix_task = counted_task  # workers find it here: the spawned __main__
    sys.argv[0] = "spectra"
    main()
