"""LoRA policy and frozen reference on one Qwen2.5-VL base (peft).

The policy is a LoRA adapter named "policy" on the language model's attention (q, k, v, o) and MLP (gate, up,
down) projections; everything else, the vision tower included, is frozen. Paper defaults: rank 128, alpha 256,
dropout 0.05 (MRG-R1, Sec. IV-A).

The reference policy of the KL term in eq. (1) is either
- the base model itself (adapter disabled), when training starts from the base; or
- a frozen copy of the starting adapter, loaded as a second adapter "reference" on the same base, when
  training starts from an existing adapter (e.g. after SFT): one base in memory, two small adapters.

`reference_policy(model)` switches to whichever applies and always switches back. It guards against a peft
trap: activating an adapter (`set_adapter`) sets `requires_grad=False` on every other adapter, so a forward
pass under "reference" followed by a backward pass would quietly give the policy no gradient. The context
manager snapshots and restores every parameter's `requires_grad`, and also runs the reference in eval mode
under `torch.no_grad()` (LoRA dropout would otherwise make the reference log-probs random).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

logger = logging.getLogger(__name__)

POLICY = "policy"
REFERENCE = "reference"
# Language-model projections only. A plain list of module names (q_proj, ..., down_proj) would also wrap the
# vision tower's MLP, whose layers use the same names.
DEFAULT_TARGET_REGEX = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def add_policy_adapter(
    model: nn.Module,
    rank: int = 128,
    alpha: int = 256,
    dropout: float = 0.05,
    target_regex: str = DEFAULT_TARGET_REGEX,
    init_from: str | Path | None = None,
) -> PeftModel:
    """Wrap `model` with a trainable LoRA adapter "policy"; freeze all base weights.

    init_from: an adapter folder (peft layout) to start from; the policy starts as a copy of it and the same
    weights are loaded again, frozen, as adapter "reference". rank/alpha/dropout/target_regex then come
    from that folder's config.
    """
    was_training = model.training
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if init_from is None:
        config = LoraConfig(
            r=rank,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=target_regex,
            bias="none",
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(model, config, adapter_name=POLICY)
    else:
        init_from = _check_adapter_dir(init_from)
        peft_model = PeftModel.from_pretrained(model, init_from, adapter_name=POLICY, is_trainable=True)
        peft_model.load_adapter(init_from, adapter_name=REFERENCE, is_trainable=False)
        peft_model.set_adapter(POLICY)
    _freeze_all_but_policy(peft_model)
    peft_model.train(was_training)  # peft may flip modules to train mode; keep the caller's mode
    wrapped = [name for name, module in peft_model.named_modules() if hasattr(module, "lora_A")]
    if not wrapped:
        raise ValueError(f"target_regex {target_regex!r} matched no module of the model")
    if any(".visual." in name for name in wrapped):
        raise ValueError(
            "the LoRA target regex wrapped vision-tower modules; it must match the language model"
        )
    trainable = sum(p.numel() for p in trainable_parameters(peft_model))
    logger.info(
        "LoRA policy adapter (%s) on %d modules: %d trainable parameters; reference = %s",
        f"from {init_from}" if init_from else f"r={rank}, alpha={alpha}, dropout={dropout}",
        len(wrapped),
        trainable,
        "frozen copy of the starting adapter"
        if has_reference_adapter(peft_model)
        else "base (adapter disabled)",
    )
    return peft_model


def _check_adapter_dir(path: str | Path) -> Path:
    path = Path(path)
    missing = [name for name in ADAPTER_FILES if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"adapter folder {path} lacks {', '.join(missing)}")
    return path


def _freeze_all_but_policy(model: PeftModel) -> None:
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(f".{POLICY}." in name and "lora_" in name)


def has_reference_adapter(model: PeftModel) -> bool:
    return REFERENCE in model.peft_config


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimizer should update (those with requires_grad)."""
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


@contextlib.contextmanager
def reference_policy(model: PeftModel) -> Iterator[PeftModel]:
    """Within the block, `model` computes the frozen reference policy (under no_grad, in eval mode): the
    "reference" adapter if one was loaded, else the base with adapters disabled. On exit the "policy"
    adapter is active again, with every parameter's requires_grad and the train/eval mode as before."""
    if not isinstance(model, PeftModel):
        raise TypeError(
            f"reference_policy needs a peft model from add_policy_adapter, got {type(model).__name__}"
        )
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    active_before = model.active_adapter
    try:
        model.eval()
        with torch.no_grad():
            if has_reference_adapter(model):
                model.set_adapter(REFERENCE, inference_mode=True)
                yield model
            else:
                with model.disable_adapter():
                    yield model
    finally:
        model.set_adapter(active_before)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(requires_grad[name])
        model.train(was_training)


def set_lora_dropout(model: nn.Module, p: float) -> int:
    """Set the dropout probability on the input of every LoRA adapter; returns how many were set.

    GRPO sets 0 so that every pass (sampling, reference, old and the policy's update) computes the same
    function while the modules stay in training mode, where transformers runs gradient checkpointing;
    ``model.eval()`` would turn that off. A dropout of 0 returns its input untouched and draws no random
    numbers. Adapters built with dropout 0 have no dropout module (peft uses an identity) and are skipped.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {p!r}")
    dropouts = [
        dropout
        for module in model.modules()
        if isinstance(getattr(module, "lora_dropout", None), nn.ModuleDict)
        for dropout in module.lora_dropout.values()
        if isinstance(dropout, nn.Dropout)
    ]
    for dropout in dropouts:
        dropout.p = p
    return len(dropouts)


def save_adapter(model: PeftModel, out_dir: str | Path, adapter_name: str = POLICY) -> Path:
    """Save one adapter in peft's layout (adapter_config.json + adapter_model.safetensors) directly in
    `out_dir`, so `PeftModel.from_pretrained(base, out_dir)` loads it."""
    out_dir = Path(out_dir)
    if adapter_name not in model.peft_config:
        raise ValueError(f"no adapter named {adapter_name!r}; the model has {list(model.peft_config)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    # peft writes a non-"default" adapter into a subfolder named after it; save there, then move up.
    with tempfile.TemporaryDirectory(dir=out_dir) as staging:
        model.save_pretrained(staging, selected_adapters=[adapter_name], safe_serialization=True)
        for name in ADAPTER_FILES:
            shutil.move(str(Path(staging) / adapter_name / name), out_dir / name)
    logger.info("saved adapter %r to %s", adapter_name, out_dir)
    return out_dir


def load_adapter(
    model: nn.Module, adapter_dir: str | Path, adapter_name: str = POLICY, is_trainable: bool = True
) -> PeftModel:
    """Load an adapter folder onto a base model (returns a new PeftModel) or onto an existing PeftModel
    (adds it under `adapter_name` and makes it active)."""
    adapter_dir = _check_adapter_dir(adapter_dir)
    if isinstance(model, PeftModel):
        model.load_adapter(adapter_dir, adapter_name=adapter_name, is_trainable=is_trainable)
        model.set_adapter(adapter_name, inference_mode=not is_trainable)
        return model
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return PeftModel.from_pretrained(model, adapter_dir, adapter_name=adapter_name, is_trainable=is_trainable)


def merge_and_save(
    model: PeftModel, out_dir: str | Path, processor=None, adapter_name: str = POLICY
) -> nn.Module:
    """Merge `adapter_name` into the base weights and save a plain checkpoint (plus the processor if given)
    that loads without peft. This consumes the wrapper: the returned module is the merged base model."""
    if adapter_name not in model.peft_config:
        raise ValueError(f"no adapter named {adapter_name!r}; the model has {list(model.peft_config)}")
    model.set_adapter(adapter_name)
    for other in [name for name in model.peft_config if name != adapter_name]:
        model.delete_adapter(other)
    merged = model.merge_and_unload()
    out_dir = Path(out_dir)
    merged.save_pretrained(out_dir, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(out_dir)
    logger.info("merged adapter %r into the base and saved to %s", adapter_name, out_dir)
    return merged
