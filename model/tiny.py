"""Build the tiny offline Qwen2.5-VL: same classes and code paths as the 7B checkpoint, a few hundred k weights.

No weights can be downloaded where the tests and the demo run, so this module makes a complete checkpoint
folder from scratch:

- a byte-level BPE tokenizer trained on the given texts (the synthetic world's reports), with Qwen2's
  pre-tokenizer regex, NFC normalisation and the ByteLevel decoder, wrapped as `Qwen2Tokenizer`;
- Qwen2.5-VL's special tokens (`<|im_start|>`, `<|im_end|>`, `<|endoftext|>`, the vision markers and pads)
  and the answer tags `<think>`, `</think>`, `<report>`, `</report>` as ordinary (non-special) added tokens, so
  each tag is one token and `decode(skip_special_tokens=True)` keeps it;
- a chat template that renders conversations exactly like Qwen2.5-VL's (default system turn, one
  `<|vision_start|><|image_pad|><|vision_end|>` per image);
- a randomly initialised `Qwen2_5_VLForConditionalGeneration` from a small config (see `TinySizes`);
- a PIL image processor with small pixel bounds, so a 112 x 112 image becomes 8 x 8 patches = 16 tokens.

`model.loading.load_model_and_processor` then opens the folder exactly as it opens a real checkpoint.

    python -m model.tiny --out runs/tiny-model --texts runs/world/annotation.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Regex as TokenizerRegex
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLImageProcessorPil,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from data.prompts import PromptConfig
from model.loading import load_model_and_processor, vision_token_ids
from model.processor import ImageOnlyQwen2_5_VLProcessor

logger = logging.getLogger(__name__)

PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
# Qwen2.5-VL's special tokens, in the checkpoint's order (ids follow the learned vocabulary here).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Answer-format tags: single tokens, but not special, so decoding with skip_special_tokens keeps them.
TAG_TOKENS = ("<think>", "</think>", "<report>", "</report>")

# Renders like Qwen2.5-VL's template: a default system turn when none is given, `<|im_start|>role\n...`
# turns closed by `<|im_end|>\n`, each image as vision_start + image_pad + vision_end, and the assistant
# header when a generation prompt is asked for. (No literal newline follows a `%}`: HF renders with
# trim_blocks.)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# The final RMSNorm fixes the hidden state's scale, so the output head alone sets how peaked the logits can be.
# With the usual 0.02 init at width 64, logits have std ~0.16: a near-uniform policy that LoRA on the layers
# cannot sharpen (SFT stalls near log(vocab)). std 0.4 gives logits of std ~3, like a trained LM's.
OUTPUT_HEAD_STD = 0.4


@dataclass(frozen=True)
class TinySizes:
    """Sizes of the tiny model. Chosen so one GRPO step (generate + 3 log-prob passes) takes well under a
    second on 2 CPU cores, while keeping every structural feature of the 7B model: GQA (4 query heads over
    2 KV heads), 3-D multimodal RoPE (`mrope_section` sums to head_dim / 2), windowed + full vision attention,
    2 x 2 patch merging into the text width, untied output head."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    mrope_section: tuple[int, int, int] = (2, 3, 3)
    max_position_embeddings: int = 4096
    vision_depth: int = 2
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_num_heads: int = 2
    min_pixels: int = 56 * 56  # 4 vision tokens at least
    max_pixels: int = 112 * 112  # 16 vision tokens at most


def read_texts(path: str | Path) -> list[str]:
    """Texts to train the tokenizer on: every `report` of an R2Gen `annotation.json` (all splits), or the
    non-empty lines of a plain text file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"texts file {path} does not exist")
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected an R2Gen annotation object {{split: [entries]}}")
        texts = [
            entry["report"]
            for split, entries in data.items()
            for entry in _entries(path, split, entries)
            if entry.get("report")
        ]
    else:
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"{path}: no texts found to train the tokenizer on")
    return texts


def _entries(path: Path, split: str, entries) -> list[dict]:
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"{path}: split {split!r} must be a list of entry objects")
    return entries


def train_bpe(texts: Iterable[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE with Qwen2's pre-tokenization. Returns (vocab, merges) for `Qwen2Tokenizer`;
    the vocabulary leaves room for the added special and tag tokens so the total is `vocab_size`."""
    n_added = len(SPECIAL_TOKENS) + len(TAG_TOKENS)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + n_added:
        raise ValueError(f"vocab_size must be at least {len(alphabet) + n_added} (256 bytes + added tokens)")
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(TokenizerRegex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_added, initial_alphabet=alphabet, min_frequency=2, show_progress=False
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return state["vocab"], merges


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> Qwen2Tokenizer:
    """A `Qwen2Tokenizer` over a BPE learned from `texts`, with Qwen2.5-VL's special tokens and the tags."""
    vocab, merges = train_bpe(texts, vocab_size)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, errors="replace"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tokenizer.add_tokens(list(TAG_TOKENS), special_tokens=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = TinySizes.max_position_embeddings
    return tokenizer


def tiny_config(tokenizer: Qwen2Tokenizer, sizes: TinySizes) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config of the given sizes whose token ids come from `tokenizer`."""
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    head_dim = sizes.hidden_size // sizes.num_attention_heads
    if sum(sizes.mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {sizes.mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": sizes.hidden_size,
            "intermediate_size": sizes.intermediate_size,
            "num_hidden_layers": sizes.num_hidden_layers,
            "num_attention_heads": sizes.num_attention_heads,
            "num_key_value_heads": sizes.num_key_value_heads,
            "max_position_embeddings": sizes.max_position_embeddings,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1_000_000.0,
                "mrope_section": list(sizes.mrope_section),
            },
            "bos_token_id": ids[PAD_TOKEN],
            "eos_token_id": ids[EOS_TOKEN],
            "pad_token_id": ids[PAD_TOKEN],
        },
        vision_config={
            "depth": sizes.vision_depth,
            "hidden_size": sizes.vision_hidden_size,
            "intermediate_size": sizes.vision_intermediate_size,
            "num_heads": sizes.vision_num_heads,
            "out_hidden_size": sizes.hidden_size,
            "window_size": 112,
            "fullatt_block_indexes": [sizes.vision_depth - 1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def build_tiny_model(
    out_dir: str | Path,
    texts: Iterable[str],
    vocab_size: int = 2048,
    seed: int = 0,
    sizes: TinySizes | None = None,
) -> Path:
    """Write a complete tiny Qwen2.5-VL checkpoint folder (model, tokenizer, processor, generation config)
    to `out_dir` and return its path. Deterministic for a given `texts`, `vocab_size` and `seed`."""
    sizes = sizes or TinySizes()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = list(texts)
    if not texts:
        raise ValueError("build_tiny_model needs at least one text to train the tokenizer on")

    tokenizer = build_tokenizer(texts, vocab_size=vocab_size)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=sizes.min_pixels, max_pixels=sizes.max_pixels)
    processor = ImageOnlyQwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )

    config = tiny_config(tokenizer, sizes)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, OUTPUT_HEAD_STD)
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=[config.text_config.eos_token_id, config.text_config.pad_token_id],
        pad_token_id=config.text_config.pad_token_id,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    (out_dir / "tiny_sizes.json").write_text(json.dumps(asdict(sizes), indent=2) + "\n", encoding="utf-8")
    logger.info(
        "tiny Qwen2.5-VL in %s: %d parameters, vocab %d", out_dir, count_parameters(model), len(tokenizer)
    )
    return out_dir


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def measure_generate_speed(
    model_dir: str | Path, batch: int = 8, new_tokens: int = 32, repeats: int = 5
) -> dict:
    """Generated tokens per second of the saved model on this machine: `batch` sampled sequences of exactly
    `new_tokens` tokens (EOS ignored) from one 112 x 112 image prompt; best of `repeats` runs after a warm-up."""
    from PIL import Image

    model, processor = load_model_and_processor(model_dir, device="cpu")
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image = Image.new("L", (112, 112), color=128).convert("RGB")
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    kwargs = dict(
        do_sample=True,
        num_return_sequences=batch,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        suppress_tokens=vision_token_ids(processor),
    )
    best = float("inf")
    with torch.no_grad():
        model.generate(**inputs, **kwargs)  # warm-up, not timed
        for _ in range(repeats):
            start = time.perf_counter()
            model.generate(**inputs, **kwargs)
            best = min(best, time.perf_counter() - start)
    return {
        "parameters": count_parameters(model),
        "batch": batch,
        "new_tokens": new_tokens,
        "seconds": best,
        "tokens_per_s": batch * new_tokens / best,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to write the checkpoint to")
    parser.add_argument(
        "--texts", required=True, type=Path, help="R2Gen annotation.json (its reports) or a text file (lines)"
    )
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed", action="store_true", help="also measure generate tokens/s on this machine")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    prompt = PromptConfig()
    # The prompt's words are in every sequence: let the tokenizer learn them too.
    texts = read_texts(args.texts) + [prompt.system, prompt.instruction]
    out = build_tiny_model(args.out, texts, vocab_size=args.vocab_size, seed=args.seed)
    print(f"tiny model written to {out}")
    if args.speed:
        speed = measure_generate_speed(out)
        print(
            f"parameters {speed['parameters']:,}; generate {speed['batch']} x {speed['new_tokens']} tokens "
            f"in {speed['seconds']:.3f} s = {speed['tokens_per_s']:.0f} tokens/s"
        )


if __name__ == "__main__":
    main()
