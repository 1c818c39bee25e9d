#!/usr/bin/env bash
# Install everything the tests need, fetch the real sample photos, run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet torch==2.13.0
python3 -m pip install --quiet -e ".[test]"
python3 -m ruff check .
python3 -m pyfundus.cli data fetch-samples
python3 -m pytest -q "$@"
