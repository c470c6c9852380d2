"""Train a Qwen2.5-VL report generator with GRPO (MRG-R1) or SFT.

    python train.py                                   # the offline demo (configs/demo.yaml)
    python train.py --config configs/paper_iu_xray.yaml model.path=/ckpt data.annotation=/iu/annotation.json
    torchrun --nproc_per_node=2 train.py --config ... # DDP: one process per GPU (gloo on CPU)
    python train.py --config ... --resume             # continue from the run's last good checkpoint

Overrides are ``key=value`` with dotted keys for nested values (``sampling.group_size=8``); see
grpo/config.py for every key. ``--print-config`` prints the resolved config (file + overrides) and exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
import textwrap
from pathlib import Path

import yaml

from data.r2gen import AnnotationError
from grpo import distributed
from grpo.config import ConfigError, TrainConfig, config_sections, load_config, to_dict

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"
log = logging.getLogger("train")


def prepare_assets(cfg: TrainConfig, is_main: bool) -> None:
    """Demo assets, made once and atomically (rank 0, others wait): the synthetic world when
    ``data.synthetic_n > 0`` and the tiny model when ``model.build_tiny``, each only when absent."""
    annotation = Path(cfg.data.annotation)
    model_dir = Path(cfg.model.path)
    if is_main and cfg.data.synthetic_n > 0 and not annotation.exists():
        from data.synthetic import generate_world

        log.info("generating the synthetic world (%d studies) in %s", cfg.data.synthetic_n, annotation.parent)
        tmp = annotation.parent.with_name(annotation.parent.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        generate_world(tmp, n=cfg.data.synthetic_n, seed=cfg.data.synthetic_seed)
        shutil.rmtree(annotation.parent, ignore_errors=True)
        tmp.rename(annotation.parent)
    if is_main and cfg.model.build_tiny and not (model_dir / "config.json").exists():
        from data.synthetic import world_texts
        from model.tiny import build_tiny_model

        log.info("building the tiny Qwen2.5-VL in %s", model_dir)
        prompt = cfg.data.prompt
        texts = [*world_texts(annotation), prompt.system, prompt.instruction, cfg.sft.target_template]
        tmp = model_dir.with_name(model_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        build_tiny_model(tmp, texts, seed=cfg.seed)
        shutil.rmtree(model_dir, ignore_errors=True)
        tmp.rename(model_dir)
    distributed.barrier()


def run(cfg: TrainConfig, resume: bool) -> Path:
    from grpo.sft import make_trainer

    trainer = make_trainer(cfg, resume=resume)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=config_keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML recipe (default: the demo)")
    parser.add_argument("--resume", action="store_true", help="continue from the last good checkpoint")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides, dotted keys for nested values")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    try:
        return train(cfg, args.resume)
    except (FileNotFoundError, AnnotationError) as err:  # a path or a data entry the user gave: no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


def train(cfg: TrainConfig, resume: bool) -> int:
    info = distributed.setup(cfg.device)
    if not info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    prepare_assets(cfg, info.is_main)

    # SFT warm start (the demo): train an adapter first, then GRPO starts from it (and keeps it as reference).
    if cfg.mode == "grpo" and cfg.sft.steps > 0 and cfg.model.init_adapter is None:
        sft_optim = dataclasses.replace(cfg.optim, lr=cfg.sft.lr or cfg.optim.lr)
        sft_cfg = dataclasses.replace(cfg, mode="sft", max_steps=cfg.sft.steps, optim=sft_optim,
                                      output_dir=str(Path(cfg.output_dir) / "sft"))  # fmt: skip
        sft_adapter = Path(sft_cfg.output_dir) / "final_adapter"
        if not sft_adapter.exists():
            sft_resume = resume and (Path(sft_cfg.output_dir) / "checkpoints").exists()
            run(sft_cfg, resume=sft_resume)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_adapter=str(sft_adapter)))

    final = run(cfg, resume=resume)
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
