"""Load a Qwen2.5-VL checkpoint (real or tiny) with its processor, and the model-side pieces the GRPO loop
needs: the token ids to suppress when sampling (vision tokens; optionally all non-ASCII ones), final hidden
states + output head for memory-lean completion log-probs (each prompt once), and encode-once image features.

What was checked in transformers 5.24 (tests/test_tiny_model.py holds each fact as a test):

1. Precomputed image features. `Qwen2_5_VLModel.forward` (and so the top-level model's forward) takes
   `mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=per_image_features)}` in place of
   `pixel_values`; `pooler_output` is a tuple with one `(tokens_i, hidden)` tensor per image, in the batch's
   image order (it is what `model.model.get_image_features(pixel_values, image_grid_thw)` returns). Passing
   both pixels and features is an error. `image_grid_thw` and `mm_token_type_ids` must still be passed: the
   3-D RoPE positions are computed from them, not from the features. Results are bit-identical to passing
   pixels. `generate()` accepts the same keyword (it drops it after the prefill, like pixels).
2. `generate()` itself already encodes each image once: before the prefill it runs the vision tower on the
   unexpanded batch and then repeats the features for `num_return_sequences`. The re-encoding in a GRPO step
   comes from the log-prob forwards (policy, reference, old policy) on the B*G completion rows, which is what
   `encode_images` + `ImageFeatures.repeat_per_prompt` + `ImageFeatures.model_kwargs` remove.
3. `generate()` mutates the `pooler_output` of the object it is given (it stores the expanded tuple back into
   it). `ImageFeatures.model_kwargs()` therefore builds a fresh wrapper on every call.
4. `mm_token_type_ids` (0 text, 1 image, 2 video; returned by the processor) must go to every forward,
   extended with zeros over the completion: without it the model silently falls back to 1-D text positions
   (logits change by ~4e-3 on the tiny model, and left padding is then ignored by the positions).
5. The final hidden states (after the last RMSNorm) times `lm_head.weight` are the model's logits, so the
   trainer can project only completion positions, in chunks, instead of materialising (N, T, vocab) logits.
   `language_hidden_states` runs the model's own top-level forward with `logits_to_keep=1` (one vocab row per
   sequence) and captures the final norm's output with a hook: it works unchanged on the bare model, a
   `PeftModel` and a `DistributedDataParallel` wrapper (whose forward must run for gradient sync).
6. `labels=` and `logits_to_keep=` cannot be combined in one forward.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling

from model.processor import ImageOnlyQwen2_5_VLProcessor, load_processor

logger = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("qwen2_5_vl",)
# Tokens a policy must never sample: an image/video pad in a completion makes the next forward fail
# ("Image features and image tokens do not match"), and the markers have no meaning in a report.
VISION_SPECIAL_TOKENS = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
}
ATTN_IMPLEMENTATIONS = ("auto", "flash_attention_2", "sdpa", "eager")


def load_model_and_processor(
    path: str | Path,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    attn_implementation: str = "auto",
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    gradient_checkpointing: bool = False,
) -> tuple[Qwen2_5_VLForConditionalGeneration, ImageOnlyQwen2_5_VLProcessor]:
    """Load a Qwen2.5-VL checkpoint folder and its processor.

    device "auto": CUDA when available, else CPU. dtype "auto": bf16 on CUDA, fp32 on CPU.
    attn_implementation "auto": flash_attention_2 when CUDA is there and `flash_attn` imports, else sdpa.
    min_pixels / max_pixels bound the resized image area (None keeps the checkpoint's own bounds).
    Every choice is logged. The model is returned in eval mode; the caller switches to train().
    """
    path = Path(path)
    config = _read_checkpoint_config(path)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    attn = resolve_attn_implementation(attn_implementation, device)
    logger.info(
        "loading %s (%s) on %s, dtype %s, attention %s", path, config["model_type"], device, dtype, attn
    )

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path,
        dtype=dtype,
        attn_implementation=attn,
        device_map={"": str(device)} if device.type != "cpu" else None,
    )
    model.eval()
    if gradient_checkpointing:
        # Non-reentrant checkpointing also works when only LoRA weights (not the inputs) need gradients.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        logger.info("gradient checkpointing on (non-reentrant)")

    contiguous_head_input(model)
    processor = load_processor(path, min_pixels=min_pixels, max_pixels=max_pixels)
    _check_token_ids_agree(path, model, processor)
    logger.info(
        "model: %.2f M parameters (vision %.2f M); processor pixels in [%d, %d]",
        sum(p.numel() for p in model.parameters()) / 1e6,
        sum(p.numel() for p in model.model.visual.parameters()) / 1e6,
        processor.image_processor.size["shortest_edge"],
        processor.image_processor.size["longest_edge"],
    )
    return model, processor


def _read_checkpoint_config(path: Path) -> dict:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a model checkpoint folder: {config_file} is missing")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{path} is not a Qwen2.5-VL checkpoint: config.json has model_type={model_type!r}, "
            f"expected one of {SUPPORTED_MODEL_TYPES}"
        )
    return config


def _check_token_ids_agree(path: Path, model, processor) -> None:
    tokenizer = processor.tokenizer
    expected = {
        "<|image_pad|>": model.config.image_token_id,
        "<|vision_start|>": model.config.vision_start_token_id,
        "<|vision_end|>": model.config.vision_end_token_id,
    }
    for token, model_id in expected.items():
        tokenizer_id = tokenizer.convert_tokens_to_ids(token)
        if tokenizer_id != model_id:
            raise ValueError(
                f"{path}: tokenizer id of {token} is {tokenizer_id} but config.json says {model_id}; "
                "the tokenizer does not belong to this model"
            )


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available")
    return device


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None and _imports("flash_attn")


def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # a broken build raises anything from ImportError to OSError
        return False
    return True


def resolve_attn_implementation(attn_implementation: str, device: torch.device) -> str:
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}"
        )
    if attn_implementation == "auto":
        return "flash_attention_2" if device.type == "cuda" and flash_attn_available() else "sdpa"
    if attn_implementation == "flash_attention_2" and (device.type != "cuda" or not flash_attn_available()):
        raise ValueError(
            "attn_implementation='flash_attention_2' needs CUDA and an importable flash_attn package"
        )
    return attn_implementation


def vision_token_ids(processor_or_tokenizer) -> list[int]:
    """Ids of the vision markers and pads, for `generate(suppress_tokens=...)`. Tokens missing from the
    vocabulary are skipped."""
    tokenizer = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
    vocab = tokenizer.get_vocab()
    return sorted(vocab[token] for token in VISION_SPECIAL_TOKENS if token in vocab)


def non_ascii_token_ids(processor_or_tokenizer, vocab_size: int) -> list[int]:
    """Ids that cannot be part of an ASCII report: tokens whose text is not ASCII (a byte-level piece of a
    multi-byte character decodes alone to U+FFFD) and the output rows past the tokenizer's vocabulary
    (padding rows, which no text ever trained). ``vocab_size``: the model's number of output rows."""
    tokenizer = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
    known = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(known)])
    return [i for i, text in enumerate(texts) if not text.isascii()] + list(range(known, vocab_size))


def suppressed_token_ids(processor_or_tokenizer, vocab_size: int, ascii_only: bool = False) -> list[int]:
    """What sampling never draws: the vision tokens, and with ``ascii_only`` (config ``sampling.ascii_only``)
    every token of ``non_ascii_token_ids`` too."""
    ids = set(vision_token_ids(processor_or_tokenizer))
    if ascii_only:
        ids.update(non_ascii_token_ids(processor_or_tokenizer, vocab_size))
    return sorted(ids)


def unwrap_model(model: nn.Module) -> Qwen2_5_VLForConditionalGeneration:
    """The `Qwen2_5_VLForConditionalGeneration` inside DDP / PeftModel wrappers."""
    while True:
        if isinstance(model, Qwen2_5_VLForConditionalGeneration):
            return model
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "get_base_model"):  # peft.PeftModel
            model = model.get_base_model()
        else:
            raise TypeError(f"expected a Qwen2.5-VL model (optionally wrapped), got {type(model).__name__}")


def contiguous_head_input(model: nn.Module) -> None:
    """Make the output head copy a strided input before its product (once per model; idempotent).

    With ``logits_to_keep=1`` transformers hands the head the last position of each row, a strided (B, 1, H)
    view. ``torch.matmul`` folds a 3-D input into one matrix product only when that needs no copy, so with a
    frozen head it takes the batched path instead, and on CPU that path materialises the (V, H) weight once
    per row: 4.4 GB and 20 s for 4 rows of the 7B head (docs/memory.md). Copying the B rows costs B x H."""
    head = unwrap_model(model).lm_head
    if not getattr(head, "contiguous_input", False):
        head.register_forward_pre_hook(_contiguous_first_argument)
        head.contiguous_input = True


def _contiguous_first_argument(_module: nn.Module, args: tuple):
    if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


def lm_head_weight(model: nn.Module) -> torch.Tensor:
    """The output projection's weight, shape (vocab, hidden): logits = hidden_states @ weight.T."""
    return unwrap_model(model).lm_head.weight


def language_hidden_states(model: nn.Module, **inputs) -> torch.Tensor:
    """Final-norm hidden states of the text model for every position, shape (N, T, hidden).

    `inputs` are the usual forward keywords (input_ids, attention_mask, mm_token_type_ids, image_grid_thw,
    and pixel_values or mm_encoder_outputs). The model's own forward runs (so DDP hooks and LoRA apply) with
    `logits_to_keep=1`, computing the vocab projection for one position per row only.
    """
    if "labels" in inputs:
        raise ValueError("language_hidden_states does not take labels (labels and logits_to_keep conflict)")
    if "mm_token_type_ids" not in inputs and ("pixel_values" in inputs or "mm_encoder_outputs" in inputs):
        raise ValueError("pass mm_token_type_ids with images, or the model silently uses 1-D text positions")
    final_norm = unwrap_model(model).model.language_model.norm
    captured: list[torch.Tensor] = []
    handle = final_norm.register_forward_hook(lambda _module, _args, output: captured.append(output))
    try:
        model(**inputs, logits_to_keep=1, use_cache=False)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"expected the final norm to run once, it ran {len(captured)} times")
    return captured[0]


def completion_hidden_states(
    model: nn.Module,
    prompts: dict,
    images: ImageFeatures | None,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    group_size: int,
) -> torch.Tensor:
    """Final-norm hidden states at the positions that predict each completion token, shape (B*G, T, hidden),
    running each of the B prompts once instead of once per completion.

    The prompt pass (B rows, with its images) fills a KV cache; its rows are repeated G times (row i*G + j is
    prompt i, as in `data.batching.repeat_for_group`) and the B*G completions run on it with their 3-D RoPE
    positions continuing the prompt's. The repeat is differentiable, so the G completions' gradients add up
    in the prompt's activations: the same values and gradients as `language_hidden_states` over prompt +
    completion rows (tests/test_trainer_glue.py), with the prompt's P positions computed once, not G times.
    Under DDP the prompt pass runs on the wrapped module (the wrapper's forward runs once per backward, for
    the completion pass); its parameters are the same, so their gradients join the same reduction.
    """
    G = group_size
    prompt_model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    text = unwrap_model(model).model.language_model
    captured: list[torch.Tensor] = []
    positions: list[torch.Tensor] = []
    norm_hook = text.norm.register_forward_hook(lambda _module, _args, output: captured.append(output))
    rope_hook = text.rotary_emb.register_forward_pre_hook(lambda _module, args: positions.append(args[1]))
    try:
        extra = images.model_kwargs() if images is not None else {}
        out = prompt_model(**prompts, **extra, use_cache=True, logits_to_keep=1)
        cache = out.cache
        if cache is None:
            raise RuntimeError(
                "the prompt pass returned no KV cache (gradient checkpointing turns it off in "
                "training mode): use full rows (grpo.prompt_once=false)"
            )
        cache.batch_repeat_interleave(G)
        # left padding: each row's last column is a real token; the completion continues from its position
        prompt_positions = positions[0].expand(3, -1, -1)[:, :, -1:] + 1  # (3, B, 1)
        steps = torch.arange(completion_ids.shape[1], device=completion_ids.device)
        attention_mask = torch.cat(
            [
                prompts["attention_mask"].repeat_interleave(G, dim=0),
                completion_mask.to(prompts["attention_mask"].dtype),
            ],
            dim=1,
        )
        model(
            input_ids=completion_ids,
            attention_mask=attention_mask,
            cache=cache,
            use_cache=True,
            position_ids=(prompt_positions + steps).repeat_interleave(G, dim=1),
            logits_to_keep=1,
        )
    finally:
        norm_hook.remove()
        rope_hook.remove()
    if len(captured) != 2:
        raise RuntimeError(f"expected the final norm to run twice, it ran {len(captured)} times")
    last_prompt = captured[0][:, -1:].repeat_interleave(G, dim=0)  # predicts the first completion token
    return torch.cat([last_prompt, captured[1][:, :-1]], dim=1)


@dataclass
class ImageFeatures:
    """Vision-tower outputs (merged into the text width), one `(tokens_i, hidden)` tensor per image, in the
    order of the batch's images. Computed once per step by `encode_images`, reused by every forward."""

    per_image: tuple[torch.Tensor, ...]

    def model_kwargs(self) -> dict:
        """Keywords that replace `pixel_values` in a forward or `generate()` call (a fresh wrapper each
        time: generate() writes into the one it gets)."""
        return {
            "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=tuple(self.per_image))}
        }

    def repeat_per_prompt(self, images_per_prompt: list[int], group_size: int) -> ImageFeatures:
        """Features for a batch in which each prompt appears `group_size` times in a row (row i*G + j), the
        same layout as `data.batching.repeat_for_group` gives the pixels."""
        if sum(images_per_prompt) != len(self.per_image):
            raise ValueError(
                f"images_per_prompt sums to {sum(images_per_prompt)} but there are {len(self.per_image)} "
                "encoded images"
            )
        repeated: list[torch.Tensor] = []
        start = 0
        for count in images_per_prompt:
            repeated.extend(list(self.per_image[start : start + count]) * group_size)
            start += count
        return ImageFeatures(tuple(repeated))


@torch.no_grad()
def encode_images(
    model: nn.Module, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor
) -> ImageFeatures:
    """Run the (frozen) vision tower once over a batch's images. The result carries no gradient, so reuse it
    only while the vision tower is frozen (the default for LoRA on the language model)."""
    inner = unwrap_model(model).model
    visual_trainable = any(p.requires_grad for p in inner.visual.parameters())
    if visual_trainable:
        logger.warning(
            "encode_images: the vision tower has trainable weights; reused features carry no gradient"
        )
    output = inner.get_image_features(pixel_values, image_grid_thw, return_dict=True)
    return ImageFeatures(tuple(output.pooler_output))
