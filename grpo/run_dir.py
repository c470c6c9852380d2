"""How a run starts in its folder: fresh, resumed, or refused, decided before the model loads.

    no --resume     a folder that already holds a run is refused (``--overwrite`` clears it first)
    --resume        the newest checkpoint that verifies; none at all is an error
    --resume auto   the same, or a fresh start when the run has no checkpoint yet (torchrun --max-restarts)

A resumed run's config is compared with its ``config.yaml``: a change that alters the run is refused unless
``--allow-config-change`` names it; accepted changes are appended to ``config_history.jsonl`` and
``config.yaml`` is rewritten to describe the run as it continues. The same holds for the data
(:func:`check_data`): the annotation file, the synthetic world's parameters and the images' list are
fingerprinted in ``data_fingerprint.json``; a resume on changed data is refused unless
``--allow-config-change data``, and an accepted change is recorded in ``config_history.jsonl``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from data import fingerprint
from data.files import write_text_atomic
from grpo import checkpoint, distributed
from grpo.config import TrainConfig, check_resume_config, load_config, to_dict

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
HISTORY_FILE = "config_history.jsonl"
# What a run writes in its folder; --overwrite removes these and nothing else (a warm-start SFT run in
# <run>/sft is a run of its own: train.py passes --overwrite on to it).
DATA_FILE = "data_fingerprint.json"  # what the run trains on (data/fingerprint.py), compared on resume
RUN_ENTRIES = (
    CONFIG_FILE,
    HISTORY_FILE,
    DATA_FILE,
    "metrics.jsonl",
    "samples.jsonl",
    "checkpoints",
    "tensorboard",
    "final_adapter",
    "wandb-run-id.txt",
)


class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked; the message says why and what to do."""


def holds_run(run_dir: Path) -> list[str]:
    """The run entries present in ``run_dir`` (empty: nothing to protect)."""
    return [
        name for name in RUN_ENTRIES if (Path(run_dir) / name).exists() and not _stray_file(run_dir, name)
    ]


def _stray_file(run_dir: Path, name: str) -> bool:
    """A plain file where a run keeps a folder is no run (check_writable reports it)."""
    return name in ("checkpoints", "tensorboard", "final_adapter") and (Path(run_dir) / name).is_file()


def clear_run(run_dir: Path) -> None:
    for name in RUN_ENTRIES:
        path = Path(run_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and write a probe file in it, so a full or read-only disk fails now,
    not at the first checkpoint."""
    probe = Path(folder) / f".write-probe-{os.getpid()}"
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise RunFolderError(f"{folder}: not writable ({err.strerror or err})") from None


def _write_config(run_dir: Path, cfg: TrainConfig) -> None:
    write_text_atomic(run_dir / CONFIG_FILE, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _read_saved_config(run_dir: Path) -> dict | None:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise RunFolderError(f"{path}: unreadable ({err})") from None
    if not isinstance(saved, dict):
        raise RunFolderError(f"{path}: not a config mapping")
    return saved


def start(
    cfg: TrainConfig, resume: bool | str = False, allow_changes: Sequence[str] = (), overwrite: bool = False
) -> dict | None:
    """Prepare ``cfg.output_dir`` (rank 0) and return the checkpoint to resume from, read, or None for a fresh
    start. Raises RunFolderError, CheckpointError or ConfigDriftError (each a one-line message)."""
    run_dir = Path(cfg.output_dir)
    if resume not in (False, True, "auto"):
        raise ValueError(f"resume must be False, True or 'auto', got {resume!r}")
    present = holds_run(run_dir)
    if not resume and present:
        if not overwrite:
            raise RunFolderError(
                f"{run_dir} already holds a run ({', '.join(present)}); continue it with --resume, "
                "or replace it with --overwrite"
            )
        log.warning("--overwrite: removing the run in %s (%s)", run_dir, ", ".join(present))
        clear_run(run_dir)
    check_writable(run_dir)
    check_writable(run_dir / "checkpoints")

    state = checkpoint.find_resumable(run_dir, rank=0) if resume else None
    if state is None and resume is True:
        raise checkpoint.CheckpointError(
            f"--resume: no checkpoint under {run_dir / 'checkpoints'} (use --resume auto to start fresh then)"
        )
    if state is None:
        if present and resume == "auto":
            log.info("--resume auto: %s has no checkpoint yet, starting the run afresh", run_dir)
            clear_run(run_dir)
            check_writable(run_dir / "checkpoints")
        _write_config(run_dir, cfg)
        return None

    saved = _read_saved_config(run_dir)
    if saved is None:
        log.warning("%s has no %s: the config cannot be compared with the run's", run_dir, CONFIG_FILE)
    else:
        changes = check_resume_config(saved, cfg, allow_changes)
        if changes:
            step = state["trainer_state"]["step"]
            record_history(run_dir, step, "changes", changes)
            log.warning(
                "config changed from step %d on: %s",
                step,
                ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()),
            )
    _write_config(run_dir, cfg)
    return state


def start_on_all_ranks(
    cfg: TrainConfig,
    dist: distributed.DistInfo,
    resume: bool | str = False,
    allow_changes: Sequence[str] = (),
    overwrite: bool = False,
) -> dict | None:
    """``start`` on rank 0, its outcome shared: every rank raises the same error, or reads its own RNG state
    from the same checkpoint. Returns that checkpoint, read, or None for a fresh start."""
    outcome: tuple = (None, None)
    state = None
    if dist.is_main:
        try:
            state = start(cfg, resume, allow_changes, overwrite)
            outcome = (None, state["path"] if state else None)
        except Exception as err:  # shared with the other ranks, so they stop too instead of waiting
            outcome = (err, None)
    error, path = distributed.broadcast_object(outcome)
    if error is not None:
        raise error
    if path is not None and not dist.is_main:
        state = checkpoint.load_checkpoint(path, dist.rank)
    return state


def run_config_file(run_dir: str | Path) -> Path:
    """The ``config.yaml`` of a training run folder; FileNotFoundError when ``run_dir`` is none."""
    config_file = Path(run_dir) / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: --run must be a training run folder")
    return config_file


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The config a training run folder was trained with (evaluation, export)."""
    return load_config(run_config_file(run_dir))


def data_fingerprint(cfg: TrainConfig, samples) -> dict:
    """The fingerprint of the data a run trains on: its annotation file, its images (those of ``samples``,
    relative to the images folder) and, for the synthetic world, the parameters it was generated with."""
    d = cfg.data
    root = Path(d.images_dir) if d.images_dir else Path(d.annotation).parent / "images"
    world = None
    if d.synthetic_n > 0:
        world = {
            "synthetic_n": d.synthetic_n,
            "synthetic_seed": d.synthetic_seed,
            "synthetic_image_size": d.synthetic_image_size,
        }
    paths = (path for sample in samples for path in sample.image_paths)
    return fingerprint.fingerprint(Path(d.annotation), paths, root, world)


def check_data(
    run_dir: Path, current: dict, resumed_step: int | None, allow_changes: Sequence[str] = ()
) -> None:
    """Rank 0, once the data is loaded: on resume, compare ``current`` with the run's recorded fingerprint
    (DataDriftError unless ``allow_changes`` holds ``data``; an accepted change goes to config_history.jsonl);
    then record ``current``. A run recorded before fingerprints existed is compared with nothing."""
    run_dir = Path(run_dir)
    path = run_dir / DATA_FILE
    if resumed_step is not None and path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise RunFolderError(f"{path}: unreadable ({err})") from None
        changes = fingerprint.check(saved, current, allowed="data" in allow_changes)
        if changes:
            record_history(run_dir, resumed_step, "data_changes", changes)
            log.warning(
                "data changed from step %d on (--allow-config-change data): %s",
                resumed_step,
                ", ".join(changes),
            )
    write_text_atomic(path, json.dumps(current, indent=1) + "\n")


def check_data_on_all_ranks(
    cfg: TrainConfig,
    dist: distributed.DistInfo,
    samples,
    resumed_step: int | None,
    allow_changes: Sequence[str] = (),
) -> None:
    """``check_data`` on rank 0 (the fingerprint taken there), its outcome shared: every rank raises the same
    error. One broadcast, at start."""
    error = None
    if dist.is_main:
        try:
            check_data(Path(cfg.output_dir), data_fingerprint(cfg, samples), resumed_step, allow_changes)
        except Exception as err:  # shared with the other ranks, so they stop too instead of waiting
            error = err
    error = distributed.broadcast_object(error)
    if error is not None:
        raise error


def record_history(run_dir: Path, step: int, key: str, changes: dict) -> None:
    """Append what a resume accepted (``key``: "changes" of the config, "data_changes") to the run's history."""
    record = {
        "step": step,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        key: {k: {"from": old, "to": new} for k, (old, new) in changes.items()},
    }
    with open(run_dir / HISTORY_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")
