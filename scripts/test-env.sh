#!/usr/bin/env bash
# Create (or refresh) a virtual environment with slim-plugins (editable: the tests test this
# working tree), the test tools and the three training suites the adapters are tested against.
# Usage:
#   bash scripts/test-env.sh VENV_DIR [PADDLE_VERSION]      (default: the newest paddlepaddle)
# The suites' wheels declare pins that conflict with PaddleSlim's (see docs/STACK.md), so they
# are installed with --no-deps, followed by what they really import.
set -euo pipefail
venv=${1:-.venv}
paddle=${2:-}
PY=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || $PY -m venv "$venv"
pip="$venv/bin/pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$pip" install -q --upgrade pip
if [ -n "$paddle" ]; then
  "$pip" install -q -e ".[test]" "paddlepaddle==$paddle"
else
  "$pip" install -q -e ".[cpu,test]"
fi
# the suites, without their stale pins
"$pip" install -q --no-deps paddledet==2.6.0 unstructured-paddleocr==2.10.0 paddlex==2.1.0
# What they import (numpy/pandas/opencv pins in the same command, or pip upgrades them). pip then
# checks every installed package and prints an "ERROR: pip's dependency resolver ..." block for
# the suites' own stale pins: expected, as they were installed without them. Shown only if the
# install itself fails.
log=$(mktemp)
if ! "$pip" install -q "numpy<2" "pandas<3" "opencv-python-headless<4.12" "setuptools<82" \
  pycocotools scipy scikit-learn shapely lap pyclipper typeguard terminaltables \
  scikit-image albumentations rapidfuzz colorama filelock chardet motmetrics openpyxl 2>"$log"; then
  cat "$log" >&2
  rm -f "$log"
  exit 1
fi
if grep -q "dependency conflicts" "$log"; then
  echo "note: pip reports the suites' stale pins (paddledet, paddlex, unstructured-paddleocr) as conflicts;" \
       "they are installed without them on purpose (docs/STACK.md)"
fi
grep -v -i -e "dependency resolver does not currently" -e "^[a-z0-9_.-]* [0-9][^ ]* requires " \
  -e "^This behaviour is the source" -e "^[a-z0-9_.-]* [0-9][^ ]* has requirement " "$log" >&2 || true
rm -f "$log"
"$venv/bin/python" - <<'PY'
import zlib, paddle, paddleslim  # noqa: F401
print("test environment: paddle", paddle.__version__)
PY
