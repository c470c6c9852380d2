#!/usr/bin/env bash
# The prepared GPU run (one call, at most 8 minutes on one H100/H200; nothing is downloaded):
#   GRPO steps of configs/paper_iu_xray.yaml at full 7B depth (random weights, the published Qwen2.5-VL-7B
#   widths), bf16, LoRA r128, gradient checkpointing, G = 4, 128 forced new tokens, for each rollout variant:
#   static engine with merge_lora=true and =false (torch.compile decode), hf engine; then a resume of one more
#   step from the saved checkpoint. flash-attn 2 and bitsandbytes AdamW8bit are used when they import.
#   Per variant: step seconds, ms per new token at the step's rows against the bandwidth limit, peak GPU
#   memory (torch.cuda.max_memory_allocated) against the memory plan (grpo/memory_plan.py).
# Usage: bash bench/gpu_check.sh OUTDIR
set -uo pipefail
out=${1:-/tmp/gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
python3 -c "import flash_attn; print('flash_attn', flash_attn.__version__)" 2>/dev/null || echo "flash_attn: not importable (sdpa)"
python3 -c "import bitsandbytes; print('bitsandbytes', bitsandbytes.__version__)" 2>/dev/null || echo "bitsandbytes: not importable (fp32 AdamW)"
echo "== the memory plan of the paper config at full depth (per GPU, 1 rank)"
python3 bench/paper_scale.py --write-config "$out/huatuo7b-config" >/dev/null
python3 train.py --config configs/paper_iu_xray.yaml --plan --gpu-memory "$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)MiB" \
  model.path="$out/huatuo7b-config" 2>&1 | grep -E "predicted peak|fits|merge_lora=auto|eight_bit"
echo "== GRPO steps at full depth, per rollout variant (each in a fresh process)"
timeout 440 python3 bench/gpu_paper.py --out "$out" --steps 2 --new-tokens 128 --timeout 105 2>&1 | grep -vE "Warning|warn"
echo "gpu_check: $(( $(date +%s) - start )) s"
