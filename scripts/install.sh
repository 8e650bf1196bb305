#!/usr/bin/env bash
# Installs the locked environment (uv.lock) into .venv and says how long it took.
#   scripts/install.sh run    what running the pipeline needs
#   scripts/install.sh test   plus the dev and spark extras (pytest, playwright, pyspark)
# With uv on PATH: `uv sync --frozen`. Without: pip from scripts/requirements/<target>.txt, exported from
# the same lock with hashes (`make lock` regenerates both), then the project itself.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-run}"
python="${PYTHON:-python3}"
venv=.venv
case "$target" in
  run) extras=() ;;
  test) extras=(--extra dev --extra spark) ;;
  *) echo "usage: $0 run|test" >&2; exit 2 ;;
esac
start=$(date +%s)
echo "==> installing the '$target' environment into $venv from uv.lock (first time: a few minutes)"
if command -v uv >/dev/null 2>&1; then
  # --inexact: `make run` after `make test` keeps the test extras instead of uninstalling them
  UV_PROJECT_ENVIRONMENT="$venv" uv sync --frozen --inexact --python "$(command -v "$python")" "${extras[@]}"
else
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  # --no-deps: the export is the whole locked closure already, each pinned with its hashes
  "$venv/bin/python" -m pip install --progress-bar on --no-deps --require-hashes -r "scripts/requirements/$target.txt"
  "$venv/bin/python" -m pip install --no-deps -e .
fi
echo "==> $venv ready for '$target' in $(( $(date +%s) - start )) s"
