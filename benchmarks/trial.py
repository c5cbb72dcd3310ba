"""The bad-input table run against an older spectra and this one: clean, tracebacks, wrong, lost.

Each row of tests/test_bad_input.py (and the CLI checks of tests/test_limits.py) is prepared
with today's helpers in a fresh folder, then run in a subprocess with the code of ``--before``
(a git revision: its spectra/ and data/ exported) and with this checkout's, under an
address-space limit and a timeout. A row ends ``clean`` (what the test asserts: one ``error:``
line holding the row's fragment and exit 2, or the accepted output; nothing outside read, no
temporary file left), ``traceback`` (a traceback, a MemoryError, a hang or a kill), ``data
lost`` (a file that existed changed or went) or ``wrong or stale`` (anything else). Rows whose
ids the ``--before`` table already had are run with ``--all`` only. Rows a setup cannot prepare
for a subprocess are ``not runnable``. Prints the table; writes benchmarks/results/trial.json.

    python benchmarks/trial.py [--before cdd8bfb] [--all] [--only TEXT] [--timeout 60]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import pyarrow.parquet as pq  # noqa: E402
import test_bad_input as bad  # noqa: E402
import test_limits  # noqa: E402

CHILD = "import sys\n{prelude}\nfrom spectra.cli import main\nsys.argv[0] = 'spectra'\nmain()"
WRONG = "wrong or stale"
CLASSES = ("clean", "traceback", WRONG, "data lost", "not runnable")
CLI_LIMITS = {  # the tests of test_limits.py that run the CLI; the others call the API
    "test_plot_with_a_range_far_beyond_the_blocks_draws_them_all",
    "test_pandas_metadata_in_run_and_log_files_is_not_read",
}


class Case(NamedTuple):
    """One row: its id, its setup (work dir, patches) → arguments, and what a good end prints."""

    id: str
    setup: object
    fragment: str
    accepted: bool = False  # a good end is exit 0 with ``fragment`` in stdout


def deep_pandas(root: Path, mp) -> None:
    """Deep JSON as pandas metadata in run a's file and its train log (never to be parsed)."""
    for file in (root / bad.A, root / "parquet" / "a" / "train_log.parquet"):
        table = pq.read_table(file)
        meta = (table.schema.metadata or {}) | {b"pandas": bad.DEEP.encode()}
        pq.write_table(table.replace_schema_metadata(meta), file)


LIMITS = [  # test_limits.py's CLI checks, as rows that must be accepted
    Case(
        "--layers 0-1e9 drawn",
        bad.cmd("plot", bad.A, "--layers", "0-1000000000", "--out", "figs"),
        "figure2.html",
        True,
    ),
    Case(
        "pandas metadata analyze",
        bad.cmd("analyze", bad.A, "--format", "csv", prepare=deep_pandas),
        "\na,ft,all,",
        True,
    ),
    Case(
        "pandas metadata plot",
        bad.cmd("plot", bad.A, "--figure", "3", "--out", "figs", prepare=deep_pandas),
        "figure3.html",
        True,
    ),
]


class Patches:
    """A stand-in for pytest's monkeypatch: what a setup patches, carried to the child."""

    def __init__(self) -> None:
        self.env: dict[str, str | None] = {}
        self.prelude: list[str] = []
        self.stdout: str | None = None
        self.unknown: list[str] = []

    def setenv(self, name, value, prepend=None) -> None:
        self.env[name] = str(value)

    def delenv(self, name, raising=True) -> None:
        self.env[name] = None

    def setattr(self, target, name, value, raising=True) -> None:
        where = f"{getattr(target, '__name__', target)}.{name}"
        if where == "sys.stdout":
            self.stdout = value.name
            value.close()
        elif where == "os.replace":
            code = inspect.getclosurevars(value).nonlocals["code"]
            self.prelude.append(
                f"import os\ndef fail(*a, **k):\n    raise OSError({code}, os.strerror({code}))\n"
                "os.replace = fail"
            )
        elif where == "pwd.getpwuid":
            self.prelude.append("import pwd\npwd.getpwuid = lambda uid: {}[uid]")
        else:
            self.unknown.append(where)


def cap_memory(gib: float) -> None:
    """Limit the child's address space (a memory bomb ends in MemoryError, not in swap)."""
    limit = int(gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run(case: Case, code: Path, template: Path, scratch: Path, args) -> dict:
    """Prepare ``case`` in a fresh folder, run it with the spectra in ``code``, classify it."""
    box = Path(tempfile.mkdtemp(dir=scratch))
    work = box / "work"
    shutil.copytree(template, work, symlinks=True)
    for name in ("cache", "config"):
        (box / name).mkdir()
    patches = Patches()
    try:
        argv = [str(a) for a in case.setup(work, patches)]
    except Exception as exc:
        return {"class": "not runnable", "line": f"setup: {exc!r}"}
    if patches.unknown:
        return {"class": "not runnable", "line": f"patches {patches.unknown}"}
    before, outside = bad.tree(box), bad.never_read(box)
    env = os.environ | {"PYTHONPATH": str(code), "SPECTRA_CACHE": str(box / "cache"),
                        "XDG_CONFIG_HOME": str(box / "config"), "OMP_NUM_THREADS": "1"}  # fmt: skip
    env = {k: v for k, v in (env | patches.env).items() if v is not None and k != "COLUMNS"}
    stdout = open(patches.stdout, "w") if patches.stdout else subprocess.PIPE  # noqa: SIM115
    child = [sys.executable, "-c", CHILD.format(prelude="\n".join(patches.prelude)), *argv]
    start, kind = time.monotonic(), None
    proc = subprocess.Popen(child, cwd=work, env=env, stdout=stdout, stderr=subprocess.PIPE,
                            text=True, errors="replace", start_new_session=True,
                            preexec_fn=lambda: cap_memory(args.memory_gib))  # fmt: skip
    try:
        out, err = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        (out, err), kind = proc.communicate(), "hang"
    finally:
        if patches.stdout:
            stdout.close()
    text = (out or "") + err
    read = [str(p.relative_to(box)) for p in outside if p.stat().st_atime != 0]
    after = bad.tree(box)
    changed = sorted(k for k in before if after.get(k) != before[k])
    left = [str(p) for p in work.rglob("*") if p.suffix == ".tmp" or ".importing-" in p.name]
    left += [str(p) for p in (work / "imported").glob("*")]
    lines = text.strip().splitlines()
    if kind is None and ("MemoryError" in text or proc.returncode < 0):
        kind = "memory" if "MemoryError" in text else "killed"
    if changed:
        verdict = "data lost"
    elif kind or "Traceback" in text:
        verdict = "traceback"
    elif read or left:
        verdict = WRONG
    elif case.accepted:
        verdict = "clean" if proc.returncode == 0 and case.fragment in (out or "") else WRONG
    elif proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"):
        verdict, kind = ("clean", None) if case.fragment in lines[0] else (WRONG, "other wording")
    else:
        verdict = WRONG
    shutil.rmtree(box, ignore_errors=True)
    return {"class": verdict, "kind": kind, "code": proc.returncode, "lines": len(lines),
            "line": (lines[-1] if lines else "")[:300], "fragment": case.fragment in text,
            "changed": changed, "read_outside": read, "left": left,
            "seconds": round(time.monotonic() - start, 1)}  # fmt: skip


def kinds(results: dict, version: str, verdict: str) -> str:
    """How many of a class were hangs, MemoryErrors, kills or refusals in other words."""
    found = [r[version].get("kind") for r in results.values() if r[version]["class"] == verdict]
    named = sorted({k for k in found if k})
    return f" ({', '.join(f'{found.count(k)} {k}' for k in named)})" if named else ""


def cases(args) -> list[Case]:
    """The rows to run: this release's (ids the --before table lacks), or every row."""
    rows = [Case(p.id, *p.values) for p in bad.CASES + bad.HARDENING] + LIMITS
    if not args.all:
        old = subprocess.run(["git", "-C", ROOT, "show", f"{args.before}:tests/test_bad_input.py"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        rows = [c for c in rows if c.id not in set(re.findall(r'id="([^"]*)"', old))]
    return [c for c in rows if args.only is None or args.only in c.id]


def main() -> None:
    """Run the rows on both versions, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="cdd8bfb", help="git revision of the older code")
    parser.add_argument("--all", action="store_true", help="also the rows --before already had")
    parser.add_argument("--only", help="only rows whose id holds this text")
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--memory-gib", type=float, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/trial.json")
    args = parser.parse_args()
    console, rows = Console(), cases(args)
    with tempfile.TemporaryDirectory(prefix="spectra-trial-") as tmp:
        scratch = Path(tmp)
        old = subprocess.run(["git", "-C", ROOT, "archive", args.before, "spectra", "data"],
                             capture_output=True, check=True).stdout  # fmt: skip
        (scratch / "before").mkdir()
        subprocess.run(["tar", "-x", "-C", scratch / "before"], input=old, check=True)
        versions = {"before": scratch / "before", "after": ROOT}
        for name, code in versions.items():
            check = [sys.executable, "-c", "import spectra; print(spectra.__file__)"]
            env = os.environ | {"PYTHONPATH": str(code)}
            where = subprocess.run(check, env=env, cwd=scratch, capture_output=True, text=True)
            assert where.stdout.startswith(str(code)), (name, where.stdout)
        template = bad.template.__wrapped__(
            type("Factory", (), {"mktemp": lambda self, n: Path(tempfile.mkdtemp(dir=scratch))})()
        )
        jobs = [(c, v) for c in rows for v in versions]
        with ThreadPoolExecutor(min(args.workers, 2)) as pool:
            done = pool.map(
                lambda job: run(job[0], versions[job[1]], template, scratch, args), jobs
            )
            results: dict[str, dict] = {}
            for (case, version), result in zip(jobs, done, strict=True):
                results.setdefault(case.id, {})[version] = result
                console.print(f"{version:6} {result['class']:14} {case.id}", markup=False)
    counts = {v: {k: sum(r[v]["class"] == k for r in results.values()) for k in CLASSES}
              for v in versions}  # fmt: skip
    table = Table("version", "tried", *CLASSES, title=f"{len(rows)} bad-input rows")
    for version, count in counts.items():
        cells = [f"{count[k]}{kinds(results, version, k)}" for k in CLASSES]
        table.add_row(version, str(len(rows)), *cells)
    console.print(table)
    skipped = sorted(n for n in dir(test_limits) if n.startswith("test_") and n not in CLI_LIMITS)
    console.print(f"skipped: {len(skipped)} test_limits tests that call the API, not the CLI")
    changed = {i: [r["before"]["class"], r["after"]["class"]] for i, r in results.items()
               if r["before"]["class"] != r["after"]["class"]}  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {"before": args.before, "rows": len(rows), "counts": counts, "skipped": skipped,
              "changed": changed, "cases": results}  # fmt: skip
    args.output.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    console.print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
