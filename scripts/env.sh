# Sourced by the other scripts: create (or reuse) the virtual environment and install the project into it.
# VENV overrides the location (default: .venv in the repository root).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[env] creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
fi
# Reinstall only when setup.py changed since the last install (stamp holds its hash).
STAMP="$VENV/.keras_nfnet_stamp"
WANT="$(cat "$ROOT/setup.py" | "$VENV/bin/python" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "[env] installing keras-nfnet and its dependencies (first time: a few minutes, ~3.5 GB)"
  LOG="$VENV/pip-install.log"
  if ! "$VENV/bin/python" -m pip install -q -e "$ROOT[test]" >"$LOG" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$LOG" | tail -40
    echo "[env] pip install failed; full log: $LOG" >&2
    exit 1
  fi
  echo "$WANT" > "$STAMP"
  echo "[env] done"
fi
export PATH="$VENV/bin:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# Quiet by default: TensorFlow's C++ start-up lines, and on a machine with a CUDA library but no GPU the
# "failed call to cuInit" ERROR of its CUDA platform. KERAS_NFNET_VERBOSE=1 (demo.sh --verbose) shows them.
if [ -z "${KERAS_NFNET_VERBOSE:-}" ]; then
  export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
fi
cd "$ROOT"
