"""The fast engine: prefill once per prompt, a static KV cache, a plain-PyTorch decode step on merged weights.

Per call (one micro-batch of B prompts, G samples each, N = B*G rows):

1. Prefill the B prompts through the model's own forward (LoRA active, images as encoded features or pixels):
   this is the only place images and 3-D RoPE positions are computed. Its KV cache and the RoPE positions it
   used are captured.
2. Branch: each prompt's KV rows are copied G times into a preallocated cache of P + max_new_tokens slots
   (P = padded prompt length); the G samples never recompute the prompt.
3. Decode: ``decode_step`` runs the text decoder for one token per row with plain tensor ops on
   ``DecoderWeights``, a separate set of weights where each LoRA-wrapped projection is ``W + scale * B @ A``
   (computed in float32, rounded once; the trainer's weights are untouched), or, with
   ``sampling.merge_lora=false``, the trainer's own weights plus the adapter's terms ``scale (x A) B`` computed
   as peft does (no copy). ``auto`` (the default) merges when the copy fits in the free memory with a 10%
   margin (``StaticEngine.choose_merge``; the choice is logged). Text tokens after the prompt sit
   at the same position on all three RoPE axes: the next position is the prompt's last position + 1 per row
   (with left padding and images this is not the slot index).
4. Sample with ``model.engine.next_token`` (same processing as HF generate, inverse-CDF draw); rows stop at
   their first stop token and are padded after it; the loop ends when every row has stopped.

The decode step has static shapes within a call (the cache is written with ``index_copy_`` at a tensor slot,
attention spans all slots under a validity mask), so ``sampling.compile_decode`` hands it to ``torch.compile``
on CUDA (eager elsewhere). CUDA graphs (``mode="reduce-overhead"``) are not used: the merged weights and the
cache are new tensors on every call, which graphs would copy into their static buffers on every replay.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F

from model.engine.interface import Generation, SamplingParams
from model.engine.next_token import choose_tokens
from model.loading import unwrap_model

log = logging.getLogger(__name__)

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


class Linear:
    """A projection for decoding: ``x @ weight.T + bias`` plus any unmerged LoRA terms ``scale * x A^T B^T``."""

    __slots__ = ("weight", "bias", "lora")

    def __init__(self, weight, bias=None, lora=()):
        self.weight, self.bias, self.lora = weight, bias, tuple(lora)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        for a, b, scale in self.lora:  # as peft computes it: the input cast to the adapter's dtype (float32)
            y = (y + F.linear(F.linear(x.to(a.dtype), a), b) * scale).to(y.dtype)
        return y


def rollout_linear(module: torch.nn.Module, merge: bool) -> Linear:
    """The decoding view of a (possibly peft-wrapped) nn.Linear: active LoRA adapters merged into a new weight
    tensor (``merge``) or kept as separate terms. Adapters peft has disabled or already merged are skipped."""
    base = getattr(module, "base_layer", None)
    if base is None:
        return Linear(module.weight, module.bias)
    adapters = []
    if not module.disable_adapters and not module.merged:
        adapters = [name for name in module.active_adapters if name in module.lora_A]
    for name in adapters:
        if module.use_dora.get(name, False):
            raise NotImplementedError("sampling.engine=static does not support DoRA adapters; use engine=hf")
    if not adapters:
        return Linear(base.weight, base.bias)
    if merge:
        weight = base.weight.float()
        for name in adapters:
            weight = weight + module.get_delta_weight(name).float()  # new tensor: base.weight stays as it is
        return Linear(weight.to(base.weight.dtype), base.bias)
    terms = [(module.lora_A[n].weight, module.lora_B[n].weight, module.scaling[n]) for n in adapters]
    return Linear(base.weight, base.bias, terms)


class DecoderWeights:
    """Everything ``decode_step`` reads, taken from a Qwen2.5-VL text model (bare or peft-wrapped)."""

    def __init__(self, model, merge_lora: bool = True):
        text = unwrap_model(model).model.language_model
        config = text.config
        if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or []):
            raise NotImplementedError("sampling.engine=static: sliding-window layers are not supported")
        self.embed = text.embed_tokens.weight
        self.lm_head = unwrap_model(model).lm_head.weight
        self.norm = text.norm
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        rotary = text.rotary_emb
        self.inv_freq, self.rope_scaling, self.mrope_section = (
            rotary.inv_freq,
            rotary.attention_scaling,
            list(rotary.mrope_section),
        )
        self.layers = []
        for layer in text.layers:
            attn, mlp = layer.self_attn, layer.mlp
            proj = {n: rollout_linear(getattr(attn, n), merge_lora) for n in ATTENTION_PROJECTIONS}
            proj.update({n: rollout_linear(getattr(mlp, n), merge_lora) for n in MLP_PROJECTIONS})
            proj.update(norm1=layer.input_layernorm, norm2=layer.post_attention_layernorm, act=mlp.act_fn)
            self.layers.append(proj)

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``positions`` (3, N) -> cos, sin (N, 1, 1, head_dim): Qwen2.5-VL's multimodal RoPE, whose frequency
        bands take their position from the temporal, height and width axes in turn (``mrope_section``)."""
        freqs = positions[..., None].float() * self.inv_freq.float()  # (3, N, head_dim / 2)
        bands = freqs.split(self.mrope_section, dim=-1)
        freqs = torch.cat([band[i % 3] for i, band in enumerate(bands)], dim=-1)
        angles = torch.cat((freqs, freqs), dim=-1)[:, None, None, :]
        return (angles.cos() * self.rope_scaling).to(dtype), (angles.sin() * self.rope_scaling).to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def decode_step(
    w: DecoderWeights,
    keys: torch.Tensor,
    values: torch.Tensor,
    valid: torch.Tensor,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    slot: torch.Tensor,
) -> torch.Tensor:
    """One token per row through the text decoder. ``keys``/``values`` (L, N, kv_heads, S, head_dim) are
    written at ``slot`` (a 1-element long tensor); ``valid`` (N, S) marks the slots each row attends to
    (its real prompt tokens and its completion so far, this slot included). Returns (N, vocab) logits."""
    n = tokens.shape[0]
    x = F.embedding(tokens, w.embed)[:, None, :]  # (N, 1, hidden)
    cos, sin = w.rope(positions, x.dtype)
    mask = valid[:, None, None, :]
    for index, p in enumerate(w.layers):
        h = p["norm1"](x)
        q = p["q_proj"](h).view(n, 1, w.heads, w.head_dim).transpose(1, 2)
        k = p["k_proj"](h).view(n, 1, w.kv_heads, w.head_dim).transpose(1, 2)
        v = p["v_proj"](h).view(n, 1, w.kv_heads, w.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        keys[index].index_copy_(2, slot, k)
        values[index].index_copy_(2, slot, v)
        attended = F.scaled_dot_product_attention(
            q, keys[index], values[index], attn_mask=mask, scale=w.head_dim**-0.5, enable_gqa=True
        )
        x = x + p["o_proj"](attended.transpose(1, 2).reshape(n, 1, w.heads * w.head_dim))
        h = p["norm2"](x)
        x = x + p["down_proj"](p["act"](p["gate_proj"](h)) * p["up_proj"](h))
    return F.linear(w.norm(x)[:, 0], w.lm_head)


MERGE_MARGIN = 1.1  # merge_lora=auto merges when 1.1 x the merged copy fits in the free memory


def resolve_merge(merged_bytes: int, free_bytes: int) -> bool:
    """merge_lora=auto: merge when the merged copy fits in the free memory with a margin."""
    return merged_bytes * MERGE_MARGIN <= free_bytes


class StaticEngine:
    name = "static"

    def __init__(self, merge_lora: bool | str = "auto", compile_decode: bool = False):
        self.merge_lora = merge_lora  # True, False or "auto" (merge when the copy fits: choose_merge)
        self.compile_decode = compile_decode
        self._compiled = None
        self._logged_merge = None
        self.merged = None  # the choice of the last call

    def choose_merge(self, model, device: torch.device) -> bool:
        """``merge_lora`` resolved for this call and logged when it changes: "auto" merges when the merged
        copy (the term of grpo/memory_plan.py) fits in the free memory with a margin, else decodes with the
        adapter's terms ``x W + scale (x A) B``."""
        merge = self.merge_lora
        if merge == "auto":
            need = merged_copy_bytes(model)
            merge = resolve_merge(need, free_memory_bytes(device))
        if merge != self._logged_merge:
            log.info(
                "static engine: %s (sampling.merge_lora=%s)",
                "decoding on a merged copy of the adapted projections"
                if merge
                else "decoding with the adapter's terms, no copy of the weights",
                self.merge_lora,
            )
            self._logged_merge = merge
        self.merged = merge
        return merge

    def _step_function(self, device: torch.device):
        if not (self.compile_decode and device.type == "cuda"):
            return decode_step  # CPU (or compile off): eager
        if self._compiled is None:
            self._compiled = torch.compile(decode_step, dynamic=True)
            log.info("static engine: decode step compiled with torch.compile")
        return self._compiled

    @torch.no_grad()
    def generate(self, model, prompts: dict, params: SamplingParams, images=None) -> Generation:
        """Same contract as HFEngine.generate; also returns each sampled token's log-prob."""
        G, T = params.num_samples, params.max_new_tokens
        logits, cache, next_positions = prefill(model, prompts, images)
        batch, prompt_len = prompts["input_ids"].shape
        n, device = batch * G, logits.device

        # branch: the G rows of a prompt get copies of its prompt cache (a broadcast copy, layer by layer)
        first = cache.layers[0].keys  # (B, kv_heads, P, head_dim)
        shape = (len(cache.layers), n, first.shape[1], prompt_len + T, first.shape[3])
        key_cache, value_cache = first.new_zeros(shape), first.new_zeros(shape)
        for index, layer in enumerate(cache.layers):
            key_cache[index, :, :, :prompt_len].unflatten(0, (batch, G)).copy_(layer.keys[:, None])
            value_cache[index, :, :, :prompt_len].unflatten(0, (batch, G)).copy_(layer.values[:, None])
        del cache, first
        valid = torch.zeros(n, prompt_len + T, dtype=torch.bool, device=device)
        valid[:, :prompt_len] = prompts["attention_mask"].bool().repeat_interleave(G, dim=0)
        positions = next_positions.repeat_interleave(G, dim=1)  # (3, N)
        logits = logits.repeat_interleave(G, dim=0)

        weights = DecoderWeights(model, merge_lora=self.choose_merge(model, device))
        step = self._step_function(device)
        as_ids = {"dtype": torch.long, "device": device}
        stop_ids = torch.tensor(params.stop_ids, **as_ids)
        suppress_ids = torch.tensor(params.suppress_ids, **as_ids)
        tokens = torch.full((n, T), params.pad_id, **as_ids)
        logprobs = torch.zeros(n, T, dtype=torch.float32, device=device)
        finished = torch.zeros(n, dtype=torch.bool, device=device)
        steps = T
        for t in range(T):
            chosen, logp = choose_tokens(
                logits,
                do_sample=params.do_sample,
                temperature=params.temperature,
                top_p=params.top_p,
                suppress_ids=suppress_ids,
                stop_ids=stop_ids,
                block_stop=t < params.min_new_tokens,
            )
            chosen = chosen.masked_fill(finished, params.pad_id)  # HF: rows that stopped get pad
            tokens[:, t] = chosen
            logprobs[:, t] = logp.masked_fill(finished, 0.0)
            finished |= torch.isin(chosen, stop_ids)
            if t == T - 1 or bool(finished.all()):
                steps = t + 1
                break
            slot = torch.tensor([prompt_len + t], **as_ids)
            valid[:, prompt_len + t] = True
            logits = step(weights, key_cache, value_cache, valid, chosen, positions + t, slot)
        return Generation(tokens=tokens[:, :steps], logprobs=logprobs[:, :steps])


def merged_copy_bytes(model) -> int:
    """Bytes of the merged copy DecoderWeights would make: every projection with an active adapter, at its
    dtype, plus the float32 scratch of merging the largest one (base, delta, sum)."""
    text = unwrap_model(model).model.language_model
    sizes = [
        (module.base_layer.weight.numel(), module.base_layer.weight.element_size())
        for layer in text.layers
        for module in (*(getattr(layer.self_attn, n) for n in ATTENTION_PROJECTIONS),
                       *(getattr(layer.mlp, n) for n in MLP_PROJECTIONS))
        if getattr(module, "base_layer", None) is not None
    ]  # fmt: skip
    if not sizes:
        return 0
    return sum(n * size for n, size in sizes) + 3 * 4 * max(n for n, _ in sizes)


def free_memory_bytes(device: torch.device) -> int:
    """Memory a new tensor can take now: on CUDA the driver's free memory plus what torch's allocator holds
    unused; on CPU the system's available memory."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:  # Linux
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def prefill(model, prompts: dict, images=None):
    """Run the B prompts once through the model's own forward. Returns the last position's logits (B, V),
    its KV cache (``.layers[i].keys`` / ``.values``: (B, kv_heads, P, head_dim)), and the RoPE position (3, B)
    of the first new token."""
    text = unwrap_model(model).model.language_model
    used: list[torch.Tensor] = []
    hook = text.rotary_emb.register_forward_pre_hook(lambda _m, args: used.append(args[1]))
    try:
        extra = images.model_kwargs() if images is not None else {}
        out = model(**prompts, **extra, use_cache=True, logits_to_keep=1)
    finally:
        hook.remove()
    positions = used[0].expand(3, -1, -1)  # (3, B, P); left padding: the last column is a real token
    return out.logits[:, -1], out.cache, positions[:, :, -1] + 1
