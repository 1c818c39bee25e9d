#!/usr/bin/env bash
# Install everything the tests need, fetch the real sample photos, run the whole suite.
# Outside CI everything goes into .venv in the checkout (created when missing), never into whichever python3
# is first on the PATH. CI (.ci/run sets CI=true) runs on a fresh machine and uses its python3 as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${CI:-}" = true ]; then
  python=python3
else
  [ -x .venv/bin/python ] || python3 -m venv .venv
  python=.venv/bin/python
  export PATH="$PWD/.venv/bin:$PATH"  # the tests also run the installed `pyfundus` command
fi
"$python" -m pip install --quiet torch==2.13.0
"$python" -m pip install --quiet -e ".[test]"
"$python" -m ruff check .
"$python" -m pyfundus.cli data fetch-samples
"$python" -m pytest -q "$@"
