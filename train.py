"""Train a Qwen2.5-VL report generator with GRPO (MRG-R1) or SFT.

    python train.py                                   # the offline demo (configs/demo.yaml)
    python train.py --config configs/paper_iu_xray.yaml model.path=/ckpt data.annotation=/iu/annotation.json
    torchrun --nproc_per_node=2 train.py --config ... # DDP: one process per GPU (gloo on CPU)
    python train.py --config ... --resume             # continue from the run's newest good checkpoint
    torchrun --max-restarts=3 ... train.py --config ... --resume auto   # resume if there is a checkpoint

A folder that holds a run is never reused silently: continue it with --resume (a changed config is refused
unless --allow-config-change names the keys) or replace it with --overwrite. SIGTERM or Ctrl-C ends the
current step, writes a checkpoint and exits with 128 + the signal number. Every other stop is one line on
stderr and an exit code: 2 for what the user gave (config, paths, data, a run folder, changed data on
resume), 3 for a fault of the run (a full disk, non-finite steps, a reward that raised; grpo/faults.py),
4 for a collective that timed out (dist_timeout_s: a rank hung or died; torchrun --max-restarts restarts).

Overrides are ``key=value`` with dotted keys for nested values (``sampling.group_size=8``); see
grpo/config.py for every key. ``--print-config`` prints the resolved config (file + overrides) and exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import textwrap
from pathlib import Path

import yaml

from data.files import atomic_dir
from data.fingerprint import DataDriftError
from data.images import ImageLoadError
from data.r2gen import AnnotationError
from grpo import distributed
from grpo.checkpoint import CheckpointError
from grpo.config import ConfigError, TrainConfig, config_sections, load_config, to_dict
from grpo.distributed import CollectiveTimeout
from grpo.faults import DiskFullError, NonFiniteStop, RewardFailed
from grpo.preemption import Preempted
from grpo.run_dir import RunFolderError
from rewards.chexbert import CheXbertLoadError

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"
log = logging.getLogger("train")


def prepare_assets(cfg: TrainConfig, is_main: bool) -> None:
    """Demo assets, made once and atomically (rank 0, others wait), each only when absent: the synthetic
    world when ``data.synthetic_n > 0``, the tiny model when ``model.build_tiny``, the pretrained
    synthetic base when ``model.build_base`` (the demo ships it; rebuilding takes a while, see demo/base.py)."""
    annotation = Path(cfg.data.annotation)
    model_dir = Path(cfg.model.path)
    if is_main and cfg.data.synthetic_n > 0 and not annotation.exists():
        from data.synthetic import generate_world

        log.info("generating the synthetic world (%d studies) in %s", cfg.data.synthetic_n, annotation.parent)
        with atomic_dir(annotation.parent) as tmp:
            generate_world(
                tmp,
                n=cfg.data.synthetic_n,
                seed=cfg.data.synthetic_seed,
                image_size=cfg.data.synthetic_image_size,
            )
    if is_main and cfg.model.build_tiny and not (model_dir / "config.json").exists():
        from data.synthetic import world_texts
        from model.tiny import build_tiny_model

        log.info("building the tiny Qwen2.5-VL in %s", model_dir)
        prompt = cfg.data.prompt
        texts = [*world_texts(annotation), prompt.system, prompt.instruction, cfg.sft.target_template]
        with atomic_dir(model_dir) as tmp:
            build_tiny_model(tmp, texts, seed=cfg.seed)
    if is_main and cfg.model.build_base and not (model_dir / "config.json").exists():
        from demo.base import BaseRecipe, build_base_model

        recipe = BaseRecipe()
        if recipe.image_size != cfg.data.synthetic_image_size:
            raise ValueError(
                f"data.synthetic_image_size is {cfg.data.synthetic_image_size} but the base "
                f"model is pretrained on {recipe.image_size}-pixel images"
            )
        log.info(
            "building the pretrained synthetic base in %s (%d steps; see demo/base.py)",
            model_dir,
            recipe.steps,
        )
        build_base_model(model_dir, recipe)  # written to a temporary folder, then renamed
    distributed.barrier()


# Errors about what the user gave (paths, data, config, run folder, checkpoints): one line, exit code 2.
USER_ERRORS = (
    ConfigError,
    FileNotFoundError,
    AnnotationError,
    ImageLoadError,
    CheckpointError,
    RunFolderError,
    CheXbertLoadError,
    DataDriftError,
)
# Faults of the run itself (grpo/faults.py): one line, exit code 3; every rank stopped at the same point.
RUN_FAULTS = (DiskFullError, NonFiniteStop, RewardFailed)


def run(cfg: TrainConfig, resume: bool | str, allow_changes=(), overwrite: bool = False) -> Path:
    from grpo.sft import make_trainer

    trainer = make_trainer(cfg, resume=resume, allow_config_change=tuple(allow_changes), overwrite=overwrite)
    try:
        return trainer.train()
    finally:
        trainer.close()


def config_keys_help() -> str:
    """The --help epilog: every config section, its keys, and the class whose comments document them."""
    lines = ["config sections and their keys (each key's default and meaning: the class named beside it):"]
    for section, cls, keys in config_sections():
        lines.append(f"  {section:<14}{cls.__module__.replace('.', '/')}.py  {cls.__name__}")
        lines += textwrap.wrap(" ".join(keys), width=100, initial_indent=" " * 16, subsequent_indent=" " * 16)
    return "\n".join(lines)


def _bare_resume_flag(argv: list[str]) -> list[str]:
    """``--resume key=value`` must not read key=value as the resume mode: only ``auto`` follows it."""
    return [
        "--resume=yes" if arg == "--resume" and argv[i + 1 : i + 2] != ["auto"] else arg
        for i, arg in enumerate(argv)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=config_keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML recipe (default: the demo)")
    parser.add_argument(
        "--resume", nargs="?", const="yes", choices=("yes", "auto"),
        help="continue from the newest good checkpoint; 'auto': the same, or start fresh when there is none "
        "(for torchrun --max-restarts)",
    )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace the run already in output_dir")
    parser.add_argument(
        "--allow-config-change", nargs="+", default=[], metavar="KEY",
        help="with --resume: accept these changed keys (or sections) from the resume step on; recorded in "
        "config_history.jsonl",
    )  # fmt: skip
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    parser.add_argument(
        "--plan", action="store_true",
        help="print the per-GPU memory plan (from model.path's config.json, no weights) and exit",
    )  # fmt: skip
    parser.add_argument(
        "--gpu-memory",
        metavar="SIZE",
        help="with --plan: the card's memory (e.g. 40GB): does the plan fit, and which setting would make it",
    )
    parser.add_argument(
        "--world-size",
        type=int,
        default=int(os.environ.get("WORLD_SIZE", 1)),
        help="with --plan: ranks the run will use (ZeRO-1 shards the optimizer state)",
    )
    parser.add_argument(
        "--skip-memory-check",
        action="store_true",
        help="on CUDA, load the model even when the memory plan says it will not fit",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides, dotted keys for nested values")
    args = parser.parse_args(_bare_resume_flag(sys.argv[1:] if argv is None else argv))
    # `--allow-config-change optim.lr optim.lr=1e-5`: a key has no "=", an override always has one
    args.overrides += [a for a in args.allow_config_change if "=" in a]
    args.allow_config_change = [a for a in args.allow_config_change if "=" not in a]
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite exclude each other")
    if args.allow_config_change and not args.resume:
        parser.error("--allow-config-change needs --resume")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.plan:  # the plan needs no data: a placeholder annotation (an override given by the user wins)
        args.overrides = ["data.annotation=(not read by --plan)", *args.overrides]
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    if args.plan:
        return plan(cfg, args.gpu_memory, args.world_size)
    resume = {None: False, "yes": True, "auto": "auto"}[args.resume]
    try:
        return train(cfg, resume, args.allow_config_change, args.overwrite, args.skip_memory_check)
    except Preempted as stop:
        print(stop, file=sys.stderr)
        distributed.teardown()  # every rank stopped after the same step: leave the group together, so that
        return stop.exit_code  # torchrun --max-restarts can form the next one
    except CollectiveTimeout as err:  # a rank never arrived: leave without waiting for it
        print(f"error: {err}", file=sys.stderr)
        distributed.teardown(together=False)
        return err.exit_code
    except RUN_FAULTS as err:
        print(f"error: {err}", file=sys.stderr)
        distributed.teardown()
        return err.exit_code
    except USER_ERRORS as err:  # no traceback: the message names the file, key or value
        print(f"error: {err}", file=sys.stderr)
        return 2


def plan(cfg: TrainConfig, gpu_memory: str | None, world_size: int) -> int:
    """``--plan``: print the memory plan (grpo/memory_plan.py); exit 0 when it fits (or no size given), 1 if not."""
    from grpo.memory_plan import parse_size, plan_text

    try:
        fits, text = plan_text(cfg, parse_size(gpu_memory) if gpu_memory else None, world_size)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text)
    return 0 if fits else 1


def train(
    cfg: TrainConfig,
    resume: bool | str = False,
    allow_changes=(),
    overwrite: bool = False,
    skip_memory_check: bool = False,
) -> int:
    info = distributed.setup(cfg.device, timeout_s=cfg.dist_timeout_s)
    if info.device.type == "cuda" and not skip_memory_check:
        from grpo.memory_plan import check_cuda_plan

        check_cuda_plan(cfg, info.world_size, info.device)  # one line naming the setting, before any weights
    if not info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    prepare_assets(cfg, info.is_main)

    # SFT warm start (the demo): train an adapter first, then GRPO starts from it (and keeps it as reference).
    if cfg.mode == "grpo" and cfg.sft.steps > 0 and cfg.model.init_adapter is None:
        sft_optim = dataclasses.replace(cfg.optim, lr=cfg.sft.lr or cfg.optim.lr)
        sft_cfg = dataclasses.replace(
            cfg,
            mode="sft",
            max_steps=cfg.sft.steps,
            optim=sft_optim,
            output_dir=str(Path(cfg.output_dir) / "sft"),
        )
        sft_adapter = Path(sft_cfg.output_dir) / "final_adapter"
        if overwrite or not sft_adapter.exists():  # resuming, the warm start may not have saved yet: auto
            run(sft_cfg, "auto" if resume else False, allow_changes, overwrite)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_adapter=str(sft_adapter)))

    final = run(cfg, resume, allow_changes, overwrite)
    if info.is_main:
        print(f"\nrun folder: {Path(cfg.output_dir).resolve()}")
        print(f"  metrics:  {Path(cfg.output_dir) / 'metrics.jsonl'}")
        print(f"  adapter:  {final}")
        print(
            f"  evaluate: python evaluate.py --run {cfg.output_dir} --split test --out {cfg.output_dir}/eval"
        )
    distributed.teardown()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
