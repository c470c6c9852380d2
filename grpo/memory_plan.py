"""A memory plan for a run, from the model's ``config.json`` and the TrainConfig alone (no weights are read).

``python train.py --config FILE --plan [--gpu-memory 40GB]`` prints it; ``train.py`` checks it on CUDA before
the weights load. The model is built on the meta device, so every parameter and every LoRA target (the
config's ``model.lora.target_regex``, matched like peft does) is counted exactly. Each term below is a pure
function of shapes and settings, so each is unit-tested on its own (tests/test_memory_plan.py).

Per rank, in bytes:

- frozen weights: every parameter at the model dtype (the vision tower included);
- merged copy: the static engine's decode weights with LoRA merged (``sampling.merge_lora``): one new tensor
  per adapted projection at the model dtype, alive during the rollout only, plus the float32 scratch of
  merging the largest one;
- LoRA parameters (peft keeps them in float32 whatever the base dtype), their gradients, the optimizer's
  state (AdamW: 8 bytes per parameter; bitsandbytes AdamW8bit: 2, tensors under 4,096 elements 8), sharded
  by ZeRO-1 across the ranks; a frozen reference adapter when training starts from one; DDP's gradient
  buckets (one more copy of the gradients) with more than one rank;
- KV cache of the rollout: ``prompts_per_device x G`` rows of ``prompt + max_new_tokens`` positions, plus
  the prefill's own cache of the B prompts (copied into the static cache, both alive for a moment);
- vision encoder activations (no gradient: the tower is frozen and encodes each image once per step);
- the policy's activations kept for the backward pass, with or without gradient checkpointing;
- the chunked log-prob buffers (``grpo.logprob_chunk`` tokens x vocabulary, forward and recomputation);
- runtime overhead: the CUDA context and allocator slack on a GPU; on CPU the Python/torch baseline.

The prompt length: image tokens per view = pixels / (28 x 28) at ``model.max_pixels`` (the worst case; a
rehearsal passes its real image size), views per prompt (1, or ``views_per_study`` with ``data.multi_view``),
and the text prompt (its characters / 4 plus the chat template's tokens).

Phases: the rollout (vision encode, prefill, decode on the merged copy and KV cache), the update (forward and
backward of eq. (1) over a micro-batch) and the optimizer step. The peak is the largest; the table says which.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from model.engine.static import MERGE_MARGIN

GB = 1e9
DTYPE_BYTES = {"bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "float32": 4, "fp32": 4}
LORA_BYTES = 4  # peft upcasts adapter weights to float32 (autocast_adapter_dtype)
TEXT_TEMPLATE_TOKENS = 30  # system/user/assistant headers, <|im_start|>/<|im_end|>, the vision markers
CHARS_PER_TOKEN = 4.0
CUDA_CONTEXT = 0.6 * GB  # CUDA context + cuBLAS workspace (outside torch.cuda.max_memory_allocated)
ALLOCATOR_SLACK = 0.05  # the caching allocator's fragmentation, a share of the allocated peak
# A CPU process's resident memory before any model (Python, torch, transformers, peft, tokenizers, PIL),
# measured on the 2-core test machine (tests/test_memory_plan.py compares whole-process predictions).
CPU_BASELINE = 0.46 * GB


# ----------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs from a Qwen2.5-VL config, with parameters counted on the meta device."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vision_hidden: int
    vision_intermediate: int
    vision_depth: int
    vision_heads: int
    patch: int
    merge: int
    temporal_patch: int
    total_params: int
    vision_params: int
    # (in_features, out_features) of every linear layer the LoRA regex wraps
    lora_targets: tuple[tuple[int, int], ...] = field(default=())

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def pixels_per_token(self) -> int:
        """Pixels per merged visual token: (patch x merge)^2 = 28 x 28 for Qwen2.5-VL."""
        return (self.patch * self.merge) ** 2


def load_model_config(path: str | Path):
    """A Qwen2_5_VLConfig from ``path/config.json`` (or a config.json file); reads nothing else."""
    from transformers import Qwen2_5_VLConfig

    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"the memory plan needs {file}: the model's config.json (model.path)")
    data = json.loads(file.read_text(encoding="utf-8"))
    if data.get("model_type") != "qwen2_5_vl":
        raise ValueError(f"{file}: model_type {data.get('model_type')!r}, expected 'qwen2_5_vl'")
    return Qwen2_5_VLConfig.from_dict(data)


def model_shape(config, lora_regex: str | None = None) -> ModelShape:
    """Count parameters and LoRA targets of ``config`` exactly by building the model on the meta device."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from model.lora import DEFAULT_TARGET_REGEX

    pattern = re.compile(lora_regex or DEFAULT_TARGET_REGEX)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    params = {id(p): p.numel() for p in model.parameters()}
    vision = sum(p.numel() for p in model.model.visual.parameters())
    targets = tuple(
        (module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and pattern.fullmatch(name)
    )
    text, vis = config.text_config, config.vision_config
    heads = text.num_attention_heads
    return ModelShape(
        vocab=text.vocab_size, hidden=text.hidden_size, intermediate=text.intermediate_size,
        layers=text.num_hidden_layers, heads=heads, kv_heads=text.num_key_value_heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        vision_hidden=vis.hidden_size, vision_intermediate=vis.intermediate_size, vision_depth=vis.depth,
        vision_heads=vis.num_heads, patch=vis.patch_size, merge=vis.spatial_merge_size,
        temporal_patch=vis.temporal_patch_size, total_params=sum(params.values()), vision_params=vision,
        lora_targets=targets,
    )  # fmt: skip


# ------------------------------------------------------------------------------------ the settings


@dataclass(frozen=True)
class PlanSettings:
    """The run's settings that decide memory, resolved (no "auto" left except where noted)."""

    device: str  # cuda | cpu
    dtype_bytes: int
    lora_rank: int
    prompts: int  # batch.prompts_per_device
    group_size: int
    prompt_tokens: int
    new_tokens: int
    images_per_prompt: int
    image_pixels: int
    gradient_checkpointing: bool
    merge_lora: bool
    eight_bit: bool
    logprob_chunk: int
    prompt_once: bool
    world_size: int = 1
    zero1: bool = False
    reference_adapter: bool = False
    engine: str = "static"

    @property
    def rows(self) -> int:
        return self.prompts * self.group_size

    @property
    def sequence(self) -> int:
        return self.prompt_tokens + self.new_tokens


def image_tokens(pixels: int, shape: ModelShape) -> int:
    """Merged visual tokens of one image of ``pixels`` pixels (the processor rounds sides to 28)."""
    return max(1, round(pixels / shape.pixels_per_token))


def text_prompt_tokens(system: str, instruction: str) -> int:
    """Tokens of the prompt's text without its images: characters / 4 plus the chat template's tokens."""
    return math.ceil((len(system) + len(instruction)) / CHARS_PER_TOKEN) + TEXT_TEMPLATE_TOKENS


def settings_from_config(
    cfg,
    shape: ModelShape,
    device: str,
    world_size: int = 1,
    views_per_study: int = 2,
    image_pixels: int | None = None,
    eight_bit_available: bool | None = None,
    merge_lora: bool | None = None,
) -> PlanSettings:
    """Resolve a TrainConfig's memory-relevant settings as the run would on ``device``.

    image_pixels: the pixels of one view (default ``model.max_pixels``, else Qwen's own bound of 1,003,520
    when unset). eight_bit_available: whether bitsandbytes would load (default: on CUDA, whether it imports).
    merge_lora: force a choice (default: the config's; "auto" plans the merge, see ``model.engine.static.resolve_merge``)."""
    m, s = cfg.model, cfg.sampling
    dtype = m.dtype if m.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    pixels = image_pixels or m.max_pixels or 1280 * 28 * 28
    if m.min_pixels:
        pixels = max(pixels, m.min_pixels)
    views = views_per_study if cfg.data.multi_view else 1
    text = text_prompt_tokens(cfg.data.prompt.system, cfg.data.prompt.instruction)
    prompt = text + views * image_tokens(pixels, shape)
    if cfg.optim.eight_bit == "auto":
        if eight_bit_available is None:
            eight_bit_available = device == "cuda" and _imports("bitsandbytes")
        eight_bit = device == "cuda" and eight_bit_available
    else:
        eight_bit = cfg.optim.eight_bit == "on"
    merge = s.merge_lora if merge_lora is None else merge_lora
    chunk = cfg.grpo.logprob_chunk or max(16, 2**24 // shape.vocab)
    return PlanSettings(
        device=device, dtype_bytes=DTYPE_BYTES[dtype], lora_rank=m.lora.rank, prompts=cfg.batch.prompts_per_device,
        group_size=s.group_size, prompt_tokens=prompt, new_tokens=s.max_new_tokens, images_per_prompt=views,
        image_pixels=pixels, gradient_checkpointing=m.gradient_checkpointing,
        merge_lora=True if merge == "auto" else bool(merge), eight_bit=eight_bit, logprob_chunk=chunk,
        prompt_once=cfg.grpo.prompt_once and not m.gradient_checkpointing, world_size=world_size,
        zero1=cfg.optim.zero1 and world_size > 1, reference_adapter=m.init_adapter is not None,
        engine=s.engine,
    )  # fmt: skip


def _imports(module: str) -> bool:
    import importlib

    try:
        importlib.import_module(module)
    except Exception:  # broken builds raise more than ImportError
        return False
    return True


# --------------------------------------------------------------------------------------- the terms


def frozen_weights_bytes(shape: ModelShape, p: PlanSettings) -> int:
    return shape.total_params * p.dtype_bytes


def lora_params(shape: ModelShape, rank: int) -> int:
    """LoRA parameters: A (r x in) and B (out x r) per wrapped linear layer."""
    return sum(rank * (i + o) for i, o in shape.lora_targets)


def merged_copy_bytes(shape: ModelShape, p: PlanSettings) -> int:
    """The static engine's merged projections (model dtype) + float32 scratch of merging the largest one
    (the base in float32, the delta, their sum). 0 when the engine keeps the adapter's terms (or is hf)."""
    if not p.merge_lora or p.engine != "static" or not shape.lora_targets:
        return 0
    weights = sum(i * o for i, o in shape.lora_targets)
    largest = max(i * o for i, o in shape.lora_targets)
    return weights * p.dtype_bytes + 3 * 4 * largest


def adapter_terms_bytes(shape: ModelShape, p: PlanSettings) -> int:
    """Decoding with the adapter's terms: per row, the float32 input cast and rank-r intermediate of the
    projection in flight (tiny; no copy of any weight)."""
    if p.merge_lora or p.engine != "static":
        return 0
    return p.rows * 4 * (max((i for i, _ in shape.lora_targets), default=0) + p.lora_rank)


def lora_state_bytes(shape: ModelShape, p: PlanSettings) -> dict[str, int]:
    """LoRA parameters, gradients, optimizer state (ZeRO-1 shards it), reference adapter, DDP buckets."""
    n = lora_params(shape, p.lora_rank)
    small = sum(p.lora_rank * d for i, o in shape.lora_targets for d in (i, o) if p.lora_rank * d < 4096)
    if p.eight_bit:  # two uint8 moments + blockwise absmax (float32 per 256 values); small tensors 32-bit
        state = 2 * (n - small) + 2 * 4 * math.ceil((n - small) / 256) + 8 * small
    else:
        state = 8 * n
    if p.zero1:
        state = math.ceil(state / p.world_size)
    return {
        "lora": n * LORA_BYTES,
        "grads": n * LORA_BYTES,
        "optim": state,
        "reference": n * LORA_BYTES if p.reference_adapter else 0,
        "ddp_buckets": n * LORA_BYTES if p.world_size > 1 else 0,
    }


def kv_cache_bytes(shape: ModelShape, p: PlanSettings) -> int:
    """The rollout's cache: rows x (prompt + new tokens) x layers x (K and V) x kv_dim, plus the prefill's
    cache of the B prompts (alive while it is copied G times)."""
    per_position = shape.layers * 2 * shape.kv_dim * p.dtype_bytes
    return per_position * (p.rows * p.sequence + p.prompts * p.prompt_tokens)


def vision_activation_bytes(shape: ModelShape, p: PlanSettings) -> int:
    """The frozen vision tower under no_grad, one block at a time over a micro-batch's images: the hidden
    state and residual, q/k/v, attention output, the gated MLP's three intermediates, the patch input
    (float32), and the merged output features (kept for the step)."""
    patches = p.prompts * p.images_per_prompt * image_tokens(p.image_pixels, shape) * shape.merge**2
    hv, iv = shape.vision_hidden, shape.vision_intermediate
    block = patches * (6 * hv + 3 * iv) * p.dtype_bytes
    pixels_in = patches * 3 * shape.temporal_patch * shape.patch**2 * 4
    features = patches // shape.merge**2 * shape.hidden * p.dtype_bytes
    return block + pixels_in + features


def layer_saved_bytes_per_token(shape: ModelShape, p: PlanSettings) -> int:
    """What one decoder layer keeps for the backward pass, per token: the residual and both RMSNorms (which
    compute in float32: input and normalised copies), q before/after RoPE, k before/after, v, the attention
    output, the gated MLP's gate, up, activation and product; with LoRA the rank-r intermediates (float32)
    and, when the model is not float32, peft's float32 copy of each adapted projection's input."""
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_dim
    base = p.dtype_bytes * (7 * h + 3 * kv + 4 * i)
    norms = 0 if p.dtype_bytes == 4 else 2 * 8 * h
    per_layer = [t for t in shape.lora_targets][: len(shape.lora_targets) // max(shape.layers, 1)]
    lora = sum(
        LORA_BYTES * p.lora_rank + (LORA_BYTES * inp if p.dtype_bytes != LORA_BYTES else 0)
        for inp, _ in per_layer
    )
    return base + norms + lora


def policy_activation_bytes(shape: ModelShape, p: PlanSettings, checkpointing: bool | None = None) -> int:
    """Activations of the update's forward, kept for backward, plus the backward's transient (one layer's
    gradients). Without checkpointing every layer keeps everything; with it each layer keeps its input and
    one layer at a time is recomputed. Rows run prompt + completion (or, with ``prompt_once``, the B prompts
    once and the B*G completions)."""
    checkpointing = p.gradient_checkpointing if checkpointing is None else checkpointing
    if p.prompt_once and not checkpointing:
        tokens = p.prompts * p.prompt_tokens + p.rows * p.new_tokens
    else:
        tokens = p.rows * p.sequence
    layer = layer_saved_bytes_per_token(shape, p) * tokens
    outside = tokens * shape.hidden * (3 * p.dtype_bytes + 8)  # embeddings, final norm, grad of hidden
    if checkpointing:
        return shape.layers * tokens * shape.hidden * p.dtype_bytes + 2 * layer + outside
    return shape.layers * layer + layer + outside


def logprob_buffer_bytes(shape: ModelShape, p: PlanSettings) -> int:
    """Chunked log-probs: a chunk's logits at the model dtype, in float32, the log-sum-exp's exponentials;
    recomputed in the backward with the float32 gradient and its cast: chunk x vocab x (2 dtype + 12)."""
    chunk = min(p.logprob_chunk, p.rows * p.new_tokens)
    return chunk * shape.vocab * (2 * p.dtype_bytes + 12)


def sampling_buffer_bytes(shape: ModelShape, p: PlanSettings) -> int:
    """The decode step's logits (model dtype and float32) and the sampler's float32 exponentials and
    cumulative sums, N x vocab each."""
    return p.rows * shape.vocab * (p.dtype_bytes + 3 * 4)


def forward_transient_bytes(shape: ModelShape, p: PlanSettings, tokens: int) -> int:
    """A no-grad forward (prefill, reference pass): one layer's intermediates at a time plus the residual."""
    return tokens * (p.dtype_bytes * (4 * shape.hidden + 3 * shape.intermediate) + 8 * shape.hidden)


def runtime_overhead_bytes(p: PlanSettings, allocated_peak: int) -> int:
    if p.device == "cuda":
        return int(CUDA_CONTEXT + ALLOCATOR_SLACK * allocated_peak)
    return int(CPU_BASELINE)


# ---------------------------------------------------------------------------------------- the table


@dataclass
class MemoryPlan:
    """The terms (name -> bytes), the phases (name -> bytes, overhead excluded), the peak phase and total."""

    settings: PlanSettings
    terms: dict[str, int]
    phases: dict[str, int]
    peak_phase: str
    allocated_peak: int
    overhead: int

    @property
    def total(self) -> int:
        return self.allocated_peak + self.overhead

    def table(self) -> str:
        p = self.settings
        where = "per GPU" if p.device == "cuda" else "CPU process (resident memory)"
        lines = [
            f"memory plan, {where}: {p.prompts} prompt(s) x G={p.group_size} = {p.rows} rows of "
            f"{p.prompt_tokens} prompt + {p.new_tokens} new tokens ({p.images_per_prompt} image(s) of "
            f"{p.image_pixels:,} pixels per prompt); dtype {p.dtype_bytes} bytes; LoRA r{p.lora_rank}; "
            f"gradient checkpointing {'on' if p.gradient_checkpointing else 'off'}; merge_lora "
            f"{'on' if p.merge_lora else 'off'}; optimizer {'AdamW8bit' if p.eight_bit else 'AdamW fp32'}"
            f"{f', ZeRO-1 over {p.world_size}' if p.zero1 else ''}",
            f"  {'term':<44}{'GB':>9}",
        ]
        lines += [f"  {LABELS[name]:<44}{value / GB:>9.2f}" for name, value in self.terms.items()]
        lines.append(f"  {'phases (overhead excluded):':<44}")
        for name, value in self.phases.items():
            mark = "  <- peak" if name.split(" ")[0] == self.peak_phase else ""
            lines.append(f"    {name:<42}{value / GB:>9.2f}{mark}")
        lines.append(
            f"  predicted peak: {self.total / GB:.2f} GB ({self.peak_phase} phase, "
            f"{self.allocated_peak / GB:.2f} GB + {self.overhead / GB:.2f} GB overhead)"
        )
        return "\n".join(lines)


LABELS = {
    "weights": "frozen weights",
    "merged": "engine's merged copy (adapted projections)",
    "adapter_terms": "engine's adapter terms (no copy)",
    "lora": "LoRA parameters (fp32)",
    "grads": "LoRA gradients (fp32)",
    "optim": "optimizer state",
    "reference": "reference adapter (fp32)",
    "ddp_buckets": "DDP gradient buckets",
    "kv_cache": "KV cache (rollout)",
    "vision": "vision encoder activations",
    "activations_ckpt": "policy activations, checkpointing on",
    "activations_full": "policy activations, checkpointing off",
    "logprob": "chunked log-prob buffers",
    "sampling": "sampling buffers (logits, sampler)",
    "prefill": "prefill / reference forward transient",
    "overhead": "runtime overhead",
}


def plan_memory(shape: ModelShape, p: PlanSettings) -> MemoryPlan:
    """Assemble every term and the three phases; the peak is the largest phase."""
    state = lora_state_bytes(shape, p)
    terms = {
        "weights": frozen_weights_bytes(shape, p),
        "merged": merged_copy_bytes(shape, p),
        "adapter_terms": adapter_terms_bytes(shape, p),
        **state,
        "kv_cache": kv_cache_bytes(shape, p),
        "vision": vision_activation_bytes(shape, p),
        "activations_ckpt": policy_activation_bytes(shape, p, checkpointing=True),
        "activations_full": policy_activation_bytes(shape, p, checkpointing=False),
        "logprob": logprob_buffer_bytes(shape, p),
        "sampling": sampling_buffer_bytes(shape, p),
        "prefill": forward_transient_bytes(shape, p, max(p.prompts * p.prompt_tokens, p.rows * p.sequence)),
    }
    resident = terms["weights"] + state["lora"] + state["optim"] + state["reference"]
    decode = terms["merged"] + terms["adapter_terms"] + terms["kv_cache"] + terms["sampling"]
    rollout = resident + max(terms["vision"], terms["prefill"] + terms["kv_cache"], decode)
    activations = terms["activations_ckpt" if p.gradient_checkpointing else "activations_full"]
    update = resident + state["grads"] + state["ddp_buckets"] + activations + terms["logprob"]
    step = resident + state["grads"] + state["ddp_buckets"] + (0 if p.eight_bit else state["lora"])
    phases = {
        "rollout (encode, prefill, decode)": rollout,
        "update (forward + backward)": update,
        "optimizer step": step,
    }
    peak_phase = max(phases, key=phases.get)
    allocated = phases[peak_phase]
    overhead = runtime_overhead_bytes(p, allocated)
    terms["overhead"] = overhead
    return MemoryPlan(p, terms, phases, peak_phase.split(" ")[0], allocated, overhead)


# ------------------------------------------------------------------------------------ fit and advice


def parse_size(text: str) -> int:
    """``"40GB"``, ``"80 GiB"``, ``"24g"`` or a plain number of GB -> bytes."""
    match = re.fullmatch(r"\s*([\d.]+)\s*(gib|gb|g|mib|mb|m)?\s*", text.lower())
    if not match:
        raise ValueError(f"memory size {text!r}: expected e.g. 40GB or 80GiB")
    unit = {"gib": 2**30, "gb": GB, "g": GB, None: GB, "mib": 2**20, "mb": 1e6, "m": 1e6}[match.group(2)]
    return int(float(match.group(1)) * unit)


# settings that lower the peak, tried in this order: (override, change to the settings)
REMEDIES = (
    (
        "model.gradient_checkpointing=true",
        lambda p: replace(p, gradient_checkpointing=True, prompt_once=False),
    ),
    ("sampling.merge_lora=false", lambda p: replace(p, merge_lora=False)),
    ("optim.eight_bit=on", lambda p: replace(p, eight_bit=True)),
    ("batch.prompts_per_device=1", lambda p: replace(p, prompts=1)),
)


def advise(shape: ModelShape, p: PlanSettings, budget: int) -> list[str]:
    """Overrides that make the plan fit in ``budget`` bytes: a single one when one suffices (the first in
    REMEDIES' order), else the shortest prefix of REMEDIES (those that change something). Empty when it
    fits already or nothing listed helps."""
    if plan_memory(shape, p).total <= budget:
        return []
    changing = [(name, change) for name, change in REMEDIES if change(p) != p]
    for name, change in changing:
        if plan_memory(shape, change(p)).total <= budget:
            return [name]
    chosen, current = [], p
    for name, change in changing:
        chosen.append(name)
        current = change(current)
        if plan_memory(shape, current).total <= budget:
            return chosen
    return []


def fit_report(shape: ModelShape, p: PlanSettings, budget: int) -> tuple[bool, str]:
    """(fits, one line) for a card of ``budget`` bytes."""
    plan = plan_memory(shape, p)
    if plan.total <= budget:
        return (
            True,
            f"fits in {budget / GB:.0f} GB: {plan.total / GB:.2f} GB planned ({plan.peak_phase} peak)",
        )
    fixes = advise(shape, p, budget)
    hint = (
        f"; set {' '.join(fixes)}"
        if fixes
        else "; no listed setting makes it fit: fewer new tokens or pixels"
    )
    return False, (
        f"does not fit in {budget / GB:.0f} GB: {plan.total / GB:.2f} GB planned "
        f"({plan.peak_phase} peak){hint}"
    )


def plan_for_config(
    cfg, device: str = "cuda", world_size: int = 1, **kwargs
) -> tuple[ModelShape, PlanSettings]:
    """The shape (from ``model.path``'s config.json) and the resolved settings of a TrainConfig."""
    shape = model_shape(load_model_config(cfg.model.path), cfg.model.lora.target_regex)
    return shape, settings_from_config(cfg, shape, device, world_size=world_size, **kwargs)


# ------------------------------------------------------------------------------------ train.py's use


def merge_choice(shape: ModelShape, p: PlanSettings, budget: int | None) -> bool:
    """What merge_lora=auto will do on a card of ``budget`` bytes: merge when the plan with the merged copy
    (plus the engine's margin on it) fits; without a budget, merge (the engine decides at run time)."""
    merged = replace(p, merge_lora=True)
    if budget is None:
        return True
    extra = (MERGE_MARGIN - 1) * merged_copy_bytes(shape, merged)
    return plan_memory(shape, merged).total + extra <= budget


def plan_text(
    cfg, gpu_memory: int | None = None, world_size: int = 1, device: str = "cuda"
) -> tuple[bool, str]:
    """``train.py --plan``: the table for the config as it would run on ``device`` (per rank), and with a
    card size whether it fits and which setting would make it fit. Returns (fits, text)."""
    shape, p = plan_for_config(cfg, device, world_size=world_size)
    lines = [
        f"model {cfg.model.path}: {shape.total_params / 1e9:.2f} B parameters (vision "
        f"{shape.vision_params / 1e9:.2f} B), {len(shape.lora_targets)} LoRA targets, "
        f"{lora_params(shape, p.lora_rank) / 1e6:.1f} M LoRA parameters; {world_size} rank(s)"
    ]
    auto = cfg.sampling.merge_lora == "auto"
    if auto:
        p = replace(p, merge_lora=merge_choice(shape, p, gpu_memory))
    plan = plan_memory(shape, p)
    lines.append(plan.table())
    if auto:
        other = plan_memory(shape, replace(p, merge_lora=not p.merge_lora))
        why = (
            f"on {gpu_memory / GB:.0f} GB" if gpu_memory else "where free memory allows (decided at run time)"
        )
        lines.append(
            f"sampling.merge_lora=auto: {'merges' if p.merge_lora else 'keeps the adapter terms'} {why}; "
            f"with merge_lora={'false' if p.merge_lora else 'true'} the peak would be "
            f"{other.total / GB:.2f} GB ({other.peak_phase})"
        )
    if device == "cuda" and cfg.optim.eight_bit == "auto" and not p.eight_bit:
        with_8bit = plan_memory(shape, replace(p, eight_bit=True))
        lines.append(
            f"optim.eight_bit=auto: bitsandbytes does not import here, so fp32 AdamW state is planned; "
            f"where it imports the peak is {with_8bit.total / GB:.2f} GB"
        )
    fits = True
    if gpu_memory is not None:
        fits, line = fit_report(shape, p, gpu_memory)
        lines.append(line)
    return fits, "\n".join(lines)


def check_cuda_plan(cfg, world_size: int, device) -> None:
    """Before the weights load on CUDA: raise MemoryPlanError (one line naming the setting) when the plan
    exceeds the card's free memory (``torch.cuda.mem_get_info``). The demo's built models are skipped."""
    import torch

    from grpo.config import ConfigError

    if cfg.model.build_tiny or cfg.model.build_base or not (Path(cfg.model.path) / "config.json").is_file():
        return
    free, _total = torch.cuda.mem_get_info(device)
    budget = int(free + CUDA_CONTEXT)  # the context already exists and is not in `free`
    shape, p = plan_for_config(cfg, "cuda", world_size=world_size)
    if cfg.sampling.merge_lora == "auto":
        p = replace(p, merge_lora=merge_choice(shape, p, budget))
    fits, line = fit_report(shape, p, budget)
    if not fits:
        raise ConfigError(
            f"memory plan ({torch.cuda.get_device_name(device)}, {free / GB:.1f} GB free): {line} "
            "(python train.py --plan shows the table; --skip-memory-check runs anyway)"
        )
