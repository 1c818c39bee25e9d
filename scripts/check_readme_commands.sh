#!/usr/bin/env bash
# The README's first two commands, run as written, in order, on what a clinic PC would have: a new virtual
# environment, a plain `pip install .` (no test extra, so no scikit-image), no nvcc (CMAKE_ARGS turns the CUDA
# module off, as the README says to), an empty home folder (no sample photos, no ledger). Any command that
# exits non-zero fails the check: `pyfundus score` does when a sample could not be scored.
# .ci/run runs it after the test suite; the build goes to a folder of its own, so the suite's is untouched.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The first two ```bash blocks of the README, as written; a README that moved them fails here, not silently.
python3 - README.md >"$work/commands.sh" <<'PY'
import re, sys
blocks = re.findall(r"^```bash\n(.*?)^```", open(sys.argv[1], encoding="utf-8").read(), re.S | re.M)[:2]
if len(blocks) < 2 or "pip install ." not in blocks[0] or "fetch-samples" not in blocks[1]:
    sys.exit("the README no longer starts with the install command and the fetch-samples command")
# Each command is shown with the seconds it began at (bash takes no PS4 from the environment as root).
print("PS4='+ [at ${SECONDS} s] '\nset -x\n" + "".join(blocks))
PY
echo "--- the README's commands:"
cat "$work/commands.sh"

# pip's download cache, found before HOME moves, so downloads stay cached (when the cache is on at all).
cache=$(python3 -m pip cache dir 2>/dev/null || true)
if [ -n "$cache" ]; then export PIP_CACHE_DIR="$cache"; fi
python3 -m venv "$work/venv"
mkdir "$work/home"
unset PYFUNDUS_HOME PYFUNDUS_STATE_DIR XDG_CACHE_HOME XDG_STATE_HOME VIRTUAL_ENV
export HOME="$work/home" PATH="$work/venv/bin:$PATH"
export CMAKE_ARGS="-DPYFUNDUS_CUDA=OFF" SKBUILD_BUILD_DIR="$work/build"
started=$SECONDS
(bash -euo pipefail "$work/commands.sh")
echo "--- the README's commands ran in order in $((SECONDS - started)) s"
if "$work/venv/bin/python" -c "import skimage" 2>/dev/null; then
  echo "scikit-image got installed: the check no longer shows that a plain install suffices" >&2
  exit 1
fi
