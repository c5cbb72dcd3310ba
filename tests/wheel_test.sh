#!/usr/bin/env bash
# make wheel-test: what a new user gets from `pip install spectra-drift`. Builds the sdist and,
# from it, the wheel; checks that both carry the embedded default; installs the wheel into a
# fresh venv (torch pinned first, pip's cache reused, no -e) and runs spectra there, in a folder
# outside the checkout: --version, a short track on the embedded default, analyze, plot.
# Usage: tests/wheel_test.sh BUILDER PYTHON TORCH
#   BUILDER: a python with `build`; PYTHON: the python of the fresh venv; TORCH: a pip spec
set -euo pipefail
BUILDER=$1
PYTHON=$2
TORCH=$3
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/spectra-wheel-test.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
unset PYTHONPATH
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1

timed() {  # timed LABEL COMMAND...: run it quietly, print its wall time; its output on failure
    local label=$1 start=$EPOCHREALTIME
    shift
    if ! "$@" >"$WORK/log" 2>&1; then
        cat "$WORK/log"
        echo "wheel-test: $label failed" >&2
        exit 1
    fi
    printf 'wheel-test: %-44s %6.1f s\n' "$label" "$(awk "BEGIN { print $EPOCHREALTIME - $start }")"
}

timed "build sdist and wheel (python -m build)" "$BUILDER" -m build --outdir "$WORK/dist" "$REPO"
timed "both carry the embedded default" "$BUILDER" - "$WORK/dist" "$REPO/spectra/default" <<'EOF'
import sys, tarfile, zipfile
from pathlib import Path

dist, default = Path(sys.argv[1]), Path(sys.argv[2])
wanted = {p.relative_to(default.parents[1]).as_posix() for p in default.rglob("*")
          if p.is_file() and "__pycache__" not in p.parts}
(wheel,), (sdist,) = dist.glob("*.whl"), dist.glob("*.tar.gz")
in_wheel = set(zipfile.ZipFile(wheel).namelist())
in_sdist = {name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name}
for name, files in ((wheel.name, in_wheel), (sdist.name, in_sdist)):
    missing = sorted(wanted - files)
    assert not missing, f"{name} lacks {missing}"
assert {"data/README.md", "data/scripts/mathgen.py", "CHANGELOG.md"} <= in_sdist
EOF
timed "fresh venv" "$PYTHON" -m venv "$WORK/venv"
timed "pip install $TORCH" "$WORK/venv/bin/pip" install --quiet --no-compile "$TORCH"
timed "pip install the wheel" "$WORK/venv/bin/pip" install --quiet --no-compile "$WORK"/dist/*.whl

mkdir "$WORK/elsewhere"
cd "$WORK/elsewhere"
BIN=$WORK/venv/bin
expected=$("$BIN/python" -c "import importlib.metadata as m; print(m.version('spectra-drift'))")
[[ $("$BIN/spectra" --version) == "spectra $expected" ]] || { echo "wrong --version" >&2; exit 1; }
timed "the default is the installed package's" "$BIN/python" -c "
import spectra.default as d, sysconfig
from pathlib import Path
assert d.MODEL.is_relative_to(sysconfig.get_paths()['purelib']), d.MODEL
assert (d.MODEL / 'model.safetensors').is_file() and d.DATA.is_file()"
timed "spectra track --method lora --steps 2 --every 1" "$BIN/spectra" track --method lora \
    --steps 2 --every 1 --device cpu
timed "spectra analyze runs/*.parquet" "$BIN/spectra" analyze runs/lora.parquet
timed "spectra plot runs/*.parquet --figure 2" "$BIN/spectra" plot runs/lora.parquet --figure 2
[[ -s figures/figure2.html ]] || { ls -R figures >&2; echo "no figure" >&2; exit 1; }
echo "wheel-test: spectra $expected from the wheel tracked, analysed and plotted in $PWD"
