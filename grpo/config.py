"""Run configuration: nested dataclasses, loaded from YAML, overridden by ``key=value``, validated.

Every key a user can set lives here with its default and a comment. ``configs/*.yaml`` only list what
differs from these defaults. What one optimizer step counts:

    studies per optimizer step     = batch.prompts_per_device * world_size * batch.grad_accum
    completions per optimizer step = that * sampling.group_size

The paper's "effective batch size 16" (2 A100s, G = 4) is read here as 16 completions per optimizer step,
i.e. 4 studies x G = 4: ``prompts_per_device=1, grad_accum=2`` on 2 GPUs (see configs/paper_iu_xray.yaml).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data.prompts import PromptConfig  # the prompt texts: system turn and instruction
from grpo.advantages import ADV_SCALE_ESTIMATORS, ESTIMATORS, SCALES
from grpo.loss import AGGREGATIONS, load_loss
from model.engine import ENGINES, SamplingParams, make_engine
from model.generation import sampling_params
from model.loading import load_model_and_processor
from model.lora import add_policy_adapter, load_adapter
from rewards.combine import PAPER_WEIGHTS, TERM_NAMES
from rewards.labeling import LABELER_NAMES


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and the value."""


@dataclass
class LoraConfig:
    rank: int = 128  # paper: LoRA rank 128
    alpha: int = 256  # paper: alpha 256
    dropout: float = 0.05  # paper: dropout 0.05
    target_regex: str | None = None  # None: the language model's q/k/v/o and gate/up/down projections


@dataclass
class ModelConfig:
    path: str | None = None  # a local Qwen2.5-VL checkpoint directory (required)
    build_tiny: bool = False  # build the tiny offline model at `path` when it is absent (unit-test sized)
    build_base: bool = False  # build the pretrained synthetic base (demo/base.py) at `path` when absent
    dtype: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    attn_implementation: str = "auto"  # auto: flash_attention_2 when importable on CUDA, else sdpa
    min_pixels: int | None = None  # image resolution bounds for the processor
    max_pixels: int | None = None
    gradient_checkpointing: bool = False
    init_adapter: str | None = (
        None  # start from this adapter (e.g. after SFT); a frozen copy is the reference
    )
    lora: LoraConfig = field(default_factory=LoraConfig)

    def load_base(self, device, dtype: str | None = None, training: bool = False):
        """``(model, processor)`` of the checkpoint at ``path`` as this section configures it (``dtype``
        overrides ``self.dtype``; gradient checkpointing only for ``training``)."""
        return load_model_and_processor(
            self.path, device=device, dtype=dtype or self.dtype, attn_implementation=self.attn_implementation,
            min_pixels=self.min_pixels, max_pixels=self.max_pixels,
            gradient_checkpointing=training and self.gradient_checkpointing,
        )  # fmt: skip

    def load_policy(self, device, policy=None):
        """The policy to train: the base (or ``policy`` = ``(model, processor)`` already built) with a fresh
        trainable LoRA adapter as ``lora`` configures it, or ``init_adapter``'s weights; in train mode."""
        model, processor = policy if policy is not None else self.load_base(device, training=True)
        kwargs = {"target_regex": self.lora.target_regex} if self.lora.target_regex else {}
        model = add_policy_adapter(
            model,
            rank=self.lora.rank,
            alpha=self.lora.alpha,
            dropout=self.lora.dropout,
            init_from=self.init_adapter,
            **kwargs,
        )
        model.train()
        return model, processor

    def load_trained(self, device, adapter: str | Path | None, dtype: str | None = None, merge: bool = True):
        """A trained model to run or export: the base with ``adapter`` (None: the base alone), frozen, merged
        into the weights unless ``merge=False`` (then the PeftModel); in eval mode."""
        model, processor = self.load_base(device, dtype)
        if adapter is not None:
            model = load_adapter(model, adapter, is_trainable=False)
            model = model.merge_and_unload() if merge else model
        model.eval()
        return model, processor


@dataclass
class DataConfig:
    annotation: str | None = None  # R2Gen-format annotation.json (required)
    images_dir: str | None = None  # default: the annotation file's folder (see data/r2gen.py)
    split: str = "train"
    multi_view: bool = False  # False: each image is a sample (paper); True: all views in one prompt
    clean_reports: bool = False
    # bad entries (and images found corrupt during training) are skipped, logged and counted, not fatal
    skip_bad: bool = False
    # images checked at start: header (open each header; slow for MIMIC-CXR's ~270k images), full (decode
    # every pixel: also finds files truncated after a valid header), none (a bad image fails when drawn)
    verify_images: str = "header"
    synthetic_n: int = 0  # > 0: generate the synthetic world at `annotation`'s folder when absent (demo)
    synthetic_seed: int = 0
    synthetic_image_size: int = 112  # pixels per side; must match the base model's pretraining world
    prompt: PromptConfig = field(default_factory=PromptConfig)

    def load_samples(self, split: str | None = None) -> list:
        """The samples of ``split`` (default: ``self.split``) with every loading option of this section."""
        from data.r2gen import load_annotation

        return load_annotation(
            self.annotation, split or self.split, images_dir=self.images_dir, multi_view=self.multi_view,
            clean_reports=self.clean_reports, skip_bad=self.skip_bad, check_images=self.verify_images != "none",
            decode_images=self.verify_images == "full",
        )  # fmt: skip


@dataclass
class SamplingConfig:
    group_size: int = 4  # G, completions per study (paper: 4)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    min_new_tokens: int = 0  # > 0 suppresses EOS before that many tokens (benchmarks force a fixed length)
    mask_truncated: bool = False  # the older name of grpo.mask_truncated: either one turns it on
    # never sample tokens whose text is not ASCII (byte pieces that alone decode to U+FFFD, other scripts,
    # the output rows past the tokenizer): for English-only data, where the policy never learnt them
    ascii_only: bool = False
    # rollout engine (model/engine): static (ours: prefill once, static KV cache, merged LoRA) | hf (generate);
    # both sample the same distribution, hf is the reference and the fallback
    engine: str = "static"
    compile_decode: bool = False  # static engine on CUDA: torch.compile its decode step (ignored on CPU)
    # static engine: decode on a copy of the weights with LoRA merged (fewest matmuls; the copy of the adapted
    # projections lives during the rollout only) or keep the adapter's terms (no copy, 2 extra matmuls each);
    # auto: merge when the copy fits in the free memory with a 10% margin (grpo/memory_plan.py), logged
    merge_lora: bool | str = "auto"

    def params(self, model, processor, **decoding) -> SamplingParams:
        """What the engine samples with for ``model``: this section's fields, ``decoding`` overriding any of
        them (evaluation decodes greedily, with its own budget), plus the model's stop and suppressed ids."""
        fields = {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "min_new_tokens": self.min_new_tokens,
            "num_samples": self.group_size,
            **decoding,
        }
        return sampling_params(model, processor, ascii_only=self.ascii_only, **fields)

    def engine_for(self, name: str | None = None):
        """The rollout engine ``name`` (default: this section's ``engine``) with this section's options."""
        return make_engine(
            name or self.engine, compile_decode=self.compile_decode, merge_lora=self.merge_lora
        )


@dataclass
class GRPOConfig:
    beta: float = 0.04  # KL coefficient of eq. (1); not given by the paper
    eps_low: float = 0.2  # clip epsilon of eq. (1); not given by the paper
    eps_high: float | None = None  # None: symmetric clipping
    loss: str = "grpo"  # grpo (eq. 1) | package.module:function, a plug-in loss (docs/extending.md)
    aggregation: str = "sequence"  # sequence (paper) | token (DAPO) | dr_grpo; over the whole step's tokens
    adv_scale: str = "group"  # group (eq. 2) | batch (std over the step's batch, all ranks) | none
    # the advantage estimator (grpo/advantages.py ESTIMATORS): group (eq. 2) | no_std (Dr. GRPO: centred,
    # not scaled) | rloo (leave-one-out baseline) | batch (the step's spread); None: the one adv_scale names,
    # the older key (group -> group, batch -> batch, none -> no_std; adv_scale=group defers to this key)
    advantage: str | None = None
    # DAPO's dynamic sampling (grpo/experience.py): groups whose rewards are all equal are dropped and more
    # studies drawn, at most max_resample_rounds more draws per step; then dropped groups fill the batch
    dynamic_sampling: bool = False
    max_resample_rounds: int = 3
    mask_truncated: bool = False  # completions that hit max_new_tokens without EOS are left out of the loss
    entropy_coef: float = 0.0  # bonus + coef * (policy's token entropy) in the loss; 0: only logged (paper)
    # truncated importance sampling: each token's surrogate x min(pi_train / pi_engine, tis_cap), with the
    # log-probs the rollout engine returns (static engine); None: off
    tis_cap: float | None = None
    kl_clamp: float | None = None  # bound |ref - logp| inside the k3 KL to this; None: unbounded (paper)
    num_iterations: int = 1  # optimizer passes over each batch of rollouts (mu); 1: old policy = policy
    # tokens per chunk of the output projection in the log-prob pass; None: 2**24 / vocab (a 64 MB fp32
    # chunk of logits, ~110 tokens at Qwen's 151,936), as small as it gets before time suffers
    logprob_chunk: int | None = None
    # log-prob passes run each prompt once and its G completions on a G-fold repeat of its KV cache (same
    # values and gradients, P*(G-1) fewer positions per prompt); false, or gradient checkpointing (which
    # turns the cache off): every row runs prompt + completion
    prompt_once: bool = True

    @property
    def estimator(self) -> str:
        """The advantage estimator of the run: ``advantage``, or the one ``adv_scale`` names."""
        return self.advantage or ADV_SCALE_ESTIMATORS[self.adv_scale]


@dataclass
class RewardConfig:
    weights: dict[str, float] = field(default_factory=lambda: dict(PAPER_WEIGHTS))  # rewards/combine.py
    labeler: str = "rules"  # rules | chexbert
    chexbert_path: str | None = None
    chexbert_tokenizer: str | None = None
    margin: float | None = None  # MCCS margin m of eq. (6); None: rewards.mccs.DEFAULT_MARGIN
    blank_match: bool = False  # score 1 when both label vectors are all blank (eq. 5 gives 0)
    uncertain_as: str = "positive"  # for the CE-F1 reward
    # none: advantages of the weighted total | per_term: each term normalised within its group first (eq. 2)
    normalize: str = "none"
    overlong_penalty: int | None = None  # L: DAPO's soft penalty, 0 to -1 over the budget's last L tokens


@dataclass
class OptimConfig:
    lr: float = 5e-6  # paper
    betas: tuple[float, float] = (0.9, 0.99)  # paper
    weight_decay: float = 0.1  # paper
    eight_bit: str = "auto"  # auto: bitsandbytes AdamW8bit on CUDA when importable, else torch AdamW
    warmup_ratio: float = 0.1  # paper: cosine decay with 10% warm-up
    grad_clip: float = 0.1  # paper: gradient-norm clip 0.1
    zero1: bool = False  # shard optimizer state across ranks (torch ZeroRedundancyOptimizer)
    # a step whose loss or gradient norm is not finite is not applied (grpo/faults.py); this many in a row
    # stop the run after a checkpoint
    max_nonfinite_steps: int = 3


@dataclass
class BatchConfig:
    prompts_per_device: int = 2  # studies per rank per micro-step; each gives group_size completions
    grad_accum: int = 1  # micro-steps per optimizer step


@dataclass
class SFTConfig:
    target_template: str = "{report}"  # what the model learns to write; {report} is the reference text
    steps: int = 0  # warm-up SFT steps before GRPO (demo); 0: none
    lr: float | None = None  # learning rate of that warm-up; None: optim.lr


@dataclass
class LogConfig:
    tensorboard: str = "auto"  # auto: events when tensorboard imports (the `log` extra) | on | off
    wandb: bool = False  # also send every metrics.jsonl key to Weights & Biases (WANDB_MODE=offline works)
    wandb_project: str = "mrg-grpo"
    wandb_run_name: str | None = None  # None: output_dir


@dataclass
class TrainConfig:
    mode: str = "grpo"  # grpo | sft
    seed: int = 0
    output_dir: str = "runs/demo"
    max_steps: int | None = None  # optimizer steps; None: `epochs` over the data
    epochs: float = 1.0  # paper: 1 epoch
    device: str = "auto"  # auto | cpu | cuda
    cpu_threads: int | None = None  # torch intra-op threads on CPU; None: torch's default (one per core)
    log_every: int = 1
    sample_every: int = 10  # write a few sample completions every N steps
    save_every: int = 50
    keep_last: int = 2  # checkpoints kept
    # seconds a collective waits for every rank before the run stops with a collective timeout (exit 4;
    # torchrun --max-restarts with --resume auto continues from the last good checkpoint)
    dist_timeout_s: float = 1800.0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    log: LogConfig = field(default_factory=LogConfig)


def config_sections(cls: type = None, prefix: str = "") -> list[tuple[str, type, list[str]]]:
    """``(section, dataclass, plain keys)`` for the top level and every nested section, in declaration
    order: what ``train.py --help`` lists, each section pointing at the class that documents its keys."""
    cls = cls or TrainConfig
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    out = [
        (
            prefix.rstrip(".") or "(top level)",
            cls,
            [f.name for f in fields if not dataclasses.is_dataclass(hints[f.name])],
        )
    ]
    for f in fields:
        if dataclasses.is_dataclass(hints[f.name]):
            out += config_sections(hints[f.name], f"{prefix}{f.name}.")
    return out


# The keys that take one of a few names, and those names: validate() checks them, errors list them.
CHOICES: dict[str, tuple[str, ...]] = {
    "mode": ("grpo", "sft"),
    "device": ("auto", "cpu", "cuda"),
    "sampling.engine": ENGINES,  # model/engine
    "grpo.aggregation": AGGREGATIONS,  # grpo/loss.py
    "grpo.adv_scale": SCALES,  # grpo/advantages.py
    "optim.eight_bit": ("auto", "on", "off"),
    "reward.labeler": LABELER_NAMES,  # rewards/labeling.py
    "reward.uncertain_as": ("positive", "negative"),
    "reward.normalize": ("none", "per_term"),  # grpo/experience.py
    "log.tensorboard": ("auto", "on", "off"),
    "data.verify_images": ("none", "header", "full"),
}


# ---------------------------------------------------------------------------------------------- loading


def _check_value(value: Any, annotation: Any, key: str) -> Any:
    """Coerce ``value`` to the declared type or raise ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_value(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        key_t, val_t = typing.get_args(annotation)
        return {_check_value(k, key_t, key): _check_value(v, val_t, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        item_types = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)) or len(value) != len(item_types):
            raise ConfigError(f"{key}: expected a list of {len(item_types)} values, got {value!r}")
        return tuple(_check_value(v, t, key) for v, t in zip(value, item_types))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # PyYAML reads 5e-6 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {annotation!r}")


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        where = prefix.rstrip(".") or "top level"
        raise ConfigError(f"unknown key {prefix}{unknown[0]!s} ({where} accepts: {', '.join(sorted(known))})")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_value(value, hint, f"{prefix}{name}")
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {part} is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """``["a.b=3", "c=x"]`` -> nested dict; values parsed as YAML scalars (``3`` int, ``null`` None...)."""
    tree: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return tree


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "weights":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A config file as a dict; a ``base: other.yaml`` key (relative to this file) is loaded first."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = (path.parent / base).resolve()
    if base_path in seen:
        raise ConfigError(f"{path}: base {base} includes itself")
    return _merge(_read_yaml(base_path, (*seen, base_path)), data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- YAML file <- overrides, then validation. Errors name the file and the key."""
    data = _read_yaml(Path(path)) if path is not None else {}
    data = _merge(data, parse_overrides(overrides or []))
    try:
        cfg = _from_dict(TrainConfig, data)
        validate(cfg)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path is not None else str(err)) from None
    return cfg


def to_dict(cfg: TrainConfig) -> dict:
    """The resolved config as plain data (tuples as lists), for writing ``config.yaml``."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(cfg))


def _get_dotted(cfg: TrainConfig, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _one_of(names: tuple[str, ...]) -> str:
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(cfg: TrainConfig) -> None:
    """Reject impossible combinations with a message naming the key."""
    for key, allowed in CHOICES.items():
        value = _get_dotted(cfg, key)
        _require(value in allowed, f"{key}: expected {_one_of(allowed)}, got {value!r}")
    _require(cfg.model.path is not None, "model.path is required: a local Qwen2.5-VL checkpoint directory")
    _require(cfg.data.annotation is not None, "data.annotation is required: an R2Gen-format annotation.json")
    _require(cfg.max_steps is None or cfg.max_steps >= 1, f"max_steps: must be >= 1, got {cfg.max_steps}")
    _require(cfg.epochs > 0, f"epochs: must be > 0, got {cfg.epochs}")
    _require(
        cfg.cpu_threads is None or cfg.cpu_threads >= 1, f"cpu_threads: must be >= 1, got {cfg.cpu_threads}"
    )
    for key in ("log_every", "sample_every", "save_every", "keep_last"):
        _require(getattr(cfg, key) >= 1, f"{key}: must be >= 1, got {getattr(cfg, key)}")
    _require(cfg.dist_timeout_s > 0, f"dist_timeout_s: must be > 0, got {cfg.dist_timeout_s}")
    s, g, o, b = cfg.sampling, cfg.grpo, cfg.optim, cfg.batch
    _require(
        s.group_size >= 2 or cfg.mode == "sft",
        f"sampling.group_size: GRPO needs G >= 2 (eq. 2 normalizes within a group), got {s.group_size}",
    )
    _require(s.temperature > 0, f"sampling.temperature: must be > 0, got {s.temperature}")
    _require(0 < s.top_p <= 1, f"sampling.top_p: must be in (0, 1], got {s.top_p}")
    _require(
        isinstance(s.merge_lora, bool) or s.merge_lora == "auto",
        f"sampling.merge_lora: expected true, false or auto, got {s.merge_lora!r}",
    )
    _require(s.max_new_tokens >= 1, f"sampling.max_new_tokens: must be >= 1, got {s.max_new_tokens}")
    _require(
        0 <= s.min_new_tokens <= s.max_new_tokens,
        f"sampling.min_new_tokens: must be in [0, max_new_tokens], got {s.min_new_tokens}",
    )
    _require(g.beta >= 0, f"grpo.beta: must be >= 0, got {g.beta}")
    _require(0 < g.eps_low < 1, f"grpo.eps_low: must be in (0, 1), got {g.eps_low}")
    _require(g.eps_high is None or g.eps_high > 0, f"grpo.eps_high: must be > 0, got {g.eps_high}")
    _require(g.kl_clamp is None or g.kl_clamp > 0, f"grpo.kl_clamp: must be > 0, got {g.kl_clamp}")
    try:
        load_loss(g.loss)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    _check_toolkit(cfg)
    _require(g.num_iterations >= 1, f"grpo.num_iterations: must be >= 1, got {g.num_iterations}")
    _require(
        cfg.save_every % g.num_iterations == 0,
        f"save_every ({cfg.save_every}) must be a multiple of grpo.num_iterations ({g.num_iterations}): "
        "checkpoints are taken between batches of rollouts",
    )
    _require(
        g.logprob_chunk is None or g.logprob_chunk >= 1,
        f"grpo.logprob_chunk: must be >= 1, got {g.logprob_chunk}",
    )
    _require(o.lr > 0, f"optim.lr: must be > 0, got {o.lr}")
    _require(all(0 <= x < 1 for x in o.betas), f"optim.betas: each must be in [0, 1), got {o.betas}")
    _require(0 <= o.warmup_ratio < 1, f"optim.warmup_ratio: must be in [0, 1), got {o.warmup_ratio}")
    _require(o.grad_clip > 0, f"optim.grad_clip: must be > 0, got {o.grad_clip}")
    _require(
        o.max_nonfinite_steps >= 1, f"optim.max_nonfinite_steps: must be >= 1, got {o.max_nonfinite_steps}"
    )
    _require(b.prompts_per_device >= 1, f"batch.prompts_per_device: must be >= 1, got {b.prompts_per_device}")
    _require(b.grad_accum >= 1, f"batch.grad_accum: must be >= 1, got {b.grad_accum}")
    _require(
        not (cfg.model.build_tiny and cfg.model.build_base),
        "model.build_tiny and model.build_base: choose one model to build at model.path",
    )
    _require(cfg.model.lora.rank >= 1, f"model.lora.rank: must be >= 1, got {cfg.model.lora.rank}")
    _require(
        0 <= cfg.model.lora.dropout < 1,
        f"model.lora.dropout: must be in [0, 1), got {cfg.model.lora.dropout}",
    )
    _require(
        "{report}" in cfg.sft.target_template,
        f"sft.target_template: must contain {{report}}, got {cfg.sft.target_template!r}",
    )
    _require(cfg.sft.steps >= 0, f"sft.steps: must be >= 0, got {cfg.sft.steps}")
    r = cfg.reward
    if cfg.mode == "grpo":
        _require(bool(r.weights), "reward.weights: at least one reward term is needed for GRPO")
        for name, weight in r.weights.items():
            _require(
                name in TERM_NAMES, f"reward.weights: unknown term {name!r} (known: {', '.join(TERM_NAMES)})"
            )
            _require(weight >= 0, f"reward.weights.{name}: must be >= 0, got {weight}")
    if r.labeler == "chexbert":
        _require(
            r.chexbert_path is not None and r.chexbert_tokenizer is not None,
            "reward.labeler=chexbert needs reward.chexbert_path and reward.chexbert_tokenizer",
        )
    _require(r.margin is None or -1 < r.margin < 1, f"reward.margin: m must be in (-1, 1), got {r.margin}")


def _check_toolkit(cfg: TrainConfig) -> None:
    """The estimator, dynamic sampling, overlong, entropy and TIS options (docs/extending.md)."""
    s, g, r = cfg.sampling, cfg.grpo, cfg.reward
    names = tuple(ESTIMATORS)
    _require(
        g.advantage is None or g.advantage in names,
        f"grpo.advantage: expected {_one_of(names)} (or null), got {g.advantage!r}",
    )
    _require(
        g.advantage is None or g.adv_scale == "group" or ADV_SCALE_ESTIMATORS[g.adv_scale] == g.advantage,
        f"grpo.advantage={g.advantage} and grpo.adv_scale={g.adv_scale} disagree: grpo.adv_scale is the "
        f"older key (none means no_std); set grpo.advantage alone",
    )
    _require(
        g.max_resample_rounds >= 0, f"grpo.max_resample_rounds: must be >= 0, got {g.max_resample_rounds}"
    )
    _require(g.entropy_coef >= 0, f"grpo.entropy_coef: must be >= 0, got {g.entropy_coef}")
    _require(g.tis_cap is None or g.tis_cap > 0, f"grpo.tis_cap: must be > 0, got {g.tis_cap}")
    _require(
        g.tis_cap is None or s.engine == "static",
        f"grpo.tis_cap needs the rollout engine's log-probs: sampling.engine=static, got {s.engine}",
    )
    _require(
        r.overlong_penalty is None or 1 <= r.overlong_penalty <= s.max_new_tokens,
        f"reward.overlong_penalty: must be in [1, sampling.max_new_tokens={s.max_new_tokens}], got "
        f"{r.overlong_penalty}",
    )


# ------------------------------------------------------------------------------------- config drift

# Keys that change how a run is logged, saved or executed, never what it computes: free on resume.
HARMLESS_KEYS = (
    "output_dir", "device", "cpu_threads", "log_every", "sample_every", "save_every", "keep_last",
    "dist_timeout_s", "optim.max_nonfinite_steps",
    "model.gradient_checkpointing", "grpo.logprob_chunk", "grpo.prompt_once", "data.verify_images", "log",
)  # fmt: skip


class ConfigDriftError(ConfigError):
    """``--resume`` with a config that changes the run, without ``--allow-config-change`` for those keys."""


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _covers(pattern: str, key: str) -> bool:
    return key == pattern or key.startswith(pattern + ".")


def config_changes(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """Flattened keys whose value differs between two ``to_dict`` configs -> (saved, current)."""
    old, new = flatten(saved), flatten(current)
    missing = "<absent>"
    return {
        key: (old.get(key, missing), new.get(key, missing))
        for key in sorted(set(old) | set(new))
        if old.get(key, missing) != new.get(key, missing)
    }


def check_resume_config(saved: dict, cfg: TrainConfig, allowed: typing.Sequence[str] = ()) -> dict:
    """The run-altering changes between a run's saved config and ``cfg``, all of them covered by
    ``allowed`` (a key or a section: ``optim.lr``, ``sampling``); else ConfigDriftError listing the rest.
    Changes to HARMLESS_KEYS are neither refused nor returned."""
    current = to_dict(cfg)
    known = set(flatten(saved)) | set(flatten(current))
    for pattern in allowed:
        _require(any(_covers(pattern, k) for k in known), f"--allow-config-change: unknown key {pattern!r}")
    changes = {
        key: values
        for key, values in config_changes(saved, current).items()
        if not any(_covers(h, key) for h in HARMLESS_KEYS)
    }
    refused = [k for k in changes if not any(_covers(a, k) for a in allowed)]
    if refused:
        listed = ", ".join(f"{k} ({changes[k][0]!r} -> {changes[k][1]!r})" for k in refused)
        raise ConfigDriftError(
            f"--resume with a config that changes the run: {listed}; resume with the run's config, or accept "
            f"with --allow-config-change {' '.join(refused)}"
        )
    return changes
