#!/usr/bin/env bash
# Run a command inside r2m's virtual environment, creating / updating it first when needed.
#   bash scripts/run.sh python train.py            # the built-in benchmark, end to end
#   bash scripts/run.sh python -m pytest -q        # the test suite
# Environment: R2M_VENV (default .venv), PYTHON (default python3), R2M_CONSTRAINTS (default
# constraints.txt: the CPU/CI pins; set R2M_CONSTRAINTS= to install from the pyproject ranges).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${R2M_VENV:-.venv}"
python="${PYTHON:-python3}"
constraints="${R2M_CONSTRAINTS-constraints.txt}"
stamp="$venv/.r2m-install-stamp"
want="$(cat pyproject.toml ${constraints:+"$constraints"} | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[r2m] setting up $venv (first run or dependencies changed; takes a few minutes)" >&2
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  pip_args=(--disable-pip-version-check -q)
  [ -n "$constraints" ] && pip_args+=(-c "$constraints")
  extras="test,faces,demo,optuna,slurm,packed"   # install extras, comma-separated (add new ones here)
  "$venv/bin/python" -m pip install "${pip_args[@]}" -e ".[$extras]"
  echo "$want" > "$stamp"
fi
export NO_ALBUMENTATIONS_UPDATE=1
export PATH="$root/$venv/bin:$PATH"
exec "$@"
