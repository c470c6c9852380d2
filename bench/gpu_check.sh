#!/usr/bin/env bash
# The GPU checks of the trainer, in one go (about 6 minutes on one H100/H200):
#   1. GRPO steps of a Qwen2.5-VL-7B-sized model with random weights, bf16, LoRA r128, gradient checkpointing:
#      G = 4, 4 studies per step, 128 new tokens, once per rollout engine (hf, static) -> per phase seconds,
#      ms per new token and its share of the memory-bandwidth limit, step time and peak GPU memory;
#   2. the demo recipe on CUDA in bf16 (shortened): SFT warm start then GRPO.
# Usage: bash bench/gpu_check.sh OUTDIR
set -uo pipefail
out=${1:-/tmp/gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
for engine in hf static; do
  echo "== 7B-sized GRPO step, sampling.engine=$engine"
  timeout 240 python3 bench/grpo_step.py --size 7b --device cuda --dtype bfloat16 --steps 2 --group-size 4 \
    --batch 4 --new-tokens 128 --lora-rank 128 --gradient-checkpointing --engine "$engine" \
    --workdir /tmp/bench7b --json "$out/step_7b_$engine.json" 2>&1 | grep -vE "Warning|warn|Loading weights" | tail -12
done
echo "== demo on CUDA, bf16 (SFT 60 steps, GRPO 10 steps)"
timeout 150 python3 train.py device=cuda model.dtype=bfloat16 data.synthetic_n=300 sft.steps=60 max_steps=10 \
  output_dir=/tmp/demo-gpu 2>&1 | grep -vE "Warning|warn|Loading weights|it/s" | tail -6
cp /tmp/demo-gpu/metrics.jsonl "$out/demo_gpu_metrics.jsonl" 2>/dev/null
python3 - <<'PY'
import json
rows = [json.loads(l) for l in open("/tmp/demo-gpu/metrics.jsonl")]
for r in rows:
    print(r["step"], "reward %.3f" % r["reward"], "kl %.4f" % r.get("kl", 0), "step %.2fs" % r["step_time_s"])
PY
