#!/usr/bin/env bash
# Verifies the CUDA kernels and measures the GPU figures on this machine's GPU, in one go:
#   1. builds the CUDA module for this GPU's architecture only (the release list takes far longer);
#   2. runs the CUDA tests (parity with the plain-torch reference and with the CPU kernels,
#      float64 gradcheck, streams and devices, the model's CUDA paths);
#   3. runs the kernel tests under compute-sanitizer memcheck (where the machine allows it);
#   4. times the kernels (benchmarks/ops.py --device cuda) and the backends (pyfundus bench).
# Each step's full output goes to OUT_DIR; a summary is printed last. The exit status is that of
# the first failed step (0 when all passed).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      (default: $OUT, else ./gpu-check)
#
# Run it from the repository root with the package's Python on PATH as python3. The CUDA
# tests need only torch, numpy, safetensors, pytest and hypothesis; pyfundus bench's
# end-to-end rows also need pillow and opencv. Copy the results into benchmarks/RESULTS.md
# with the date and the GPU's name.
set -uo pipefail

out="${1:-${OUT:-gpu-check}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0
summary=()

step() {  # step NAME LOGFILE COMMAND...: runs COMMAND, keeps its output, records pass/fail
  local name="$1" log="$out/$2"
  shift 2
  local start=$SECONDS
  "$@" > "$log" 2>&1
  local rc=$?
  summary+=("$(printf '%-34s %s (%ds, %s)' "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAILED rc=$rc")" \
    $((SECONDS - start)) "$log")")
  if [ $rc -ne 0 ] && [ $status -eq 0 ]; then status=$rc; fi
  return $rc
}

if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch sees no CUDA device here; nothing to check" >&2
  exit 2
fi
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
arch=$(python3 -c "import torch; print('%d%d' % torch.cuda.get_device_capability())")

if step "build (sm_$arch)" build.log \
    env CMAKE_ARGS="-DPYFUNDUS_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=$arch" \
    python3 -m pip install --no-build-isolation --no-deps -v -e .; then
  step "CUDA tests" pytest-cuda.log python3 -m pytest -q -m cuda -p no:cacheprovider tests
  if command -v compute-sanitizer > /dev/null; then
    step "memcheck: kernel tests" memcheck.log compute-sanitizer --tool memcheck --error-exitcode 99 \
      python3 -m pytest -q -x -m cuda -p no:cacheprovider tests/test_softpool.py tests/test_window_attention.py
  else
    summary+=("memcheck: kernel tests             skipped: no compute-sanitizer on PATH")
  fi
  step "kernel timings" ops-cuda.md python3 benchmarks/ops.py --device cuda
  step "backend timings" bench-cuda.md python3 -m pyfundus.cli bench --device cuda \
    --backends torch torch+graphs torch.compile onnxruntime tensorrt --precisions fp32 fp16 bf16 \
    --batch 1 32 --iters 50 --time-box 10
fi

echo
echo "gpu_check on $(python3 -c "import torch; print(torch.cuda.get_device_name())") (sm_$arch), logs in $out:"
printf '  %s\n' "${summary[@]}"
for table in ops-cuda.md bench-cuda.md; do
  if [ -s "$out/$table" ]; then echo; cat "$out/$table"; fi
done
exit $status
