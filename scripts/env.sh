# Sourced by run.sh and test.sh: create (or reuse) .venv and install nanoseek into it.
# Only Python 3.11+ is assumed. torch is pinned to 2.13.0 first so that pip takes the
# CPU build where the machine has one on disk (any torch>=2.11 already installed is kept).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  "$PY" -m venv "$ROOT/.venv"
fi
VPY="$ROOT/.venv/bin/python"
STAMP="$ROOT/.venv/.nanoseek-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  if ! "$VPY" -c "import torch, sys; v=tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(v < (2, 11))" 2>/dev/null; then
    "$VPY" -m pip install -q --disable-pip-version-check "torch==2.13.0" || "$VPY" -m pip install -q --disable-pip-version-check "torch>=2.11"
  fi
  "$VPY" -m pip install -q --disable-pip-version-check -e "$ROOT[test]"
  touch "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
cd "$ROOT"
