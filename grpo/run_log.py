"""What a run writes as it goes (rank 0 only): metrics.jsonl, sample completions, and the same metrics as
TensorBoard events (``log.tensorboard``, the ``log`` extra) and to Weights & Biases (``log.wandb=true``;
``WANDB_MODE=offline`` keeps the run local for a later ``wandb sync``).

``metrics.jsonl`` holds one JSON object per logged optimizer step. The keys and what they tell:

    step                 optimizer steps done
    loss                 the minimized loss of the step, -J of eq. (1) (SFT: token cross-entropy)
    loss/<name>          every statistic the loss function returns, averaged over micro-batches and ranks;
                         grpo_loss's (grpo/loss.py): kl (mean per-token k3 to the reference, beta > 0),
                         clip_frac (= clip_frac_low + clip_frac_high, share of clipped tokens),
                         ratio_mean (1 on a fresh batch of rollouts), adv_mean, tokens
    reward               mean total reward of the step's completions
    reward/<term>        mean unweighted value of each reward term (mccs, format, cef1, nlg)
    reward_std           spread of the total reward over all completions
    adv_std              spread of the advantages (near 0: no learning signal)
    frac_zero_std_groups fraction of groups whose G rewards are all equal (their advantages are exactly 0)
    completion_len       mean completion length in tokens
    truncated_frac       fraction of completions that hit max_new_tokens without EOS
    format_ok            fraction of completions with full format compliance (when the reward reports it)
    grad_norm            gradient norm before clipping
    lr                   learning rate used for the step
    step_time_s          wall time of the step
    tokens_per_s         completion tokens generated per second of the step (all ranks)
    time/<phase>         seconds per phase: generate, reward, logprob_ref, train (forward+backward), optim
    skipped_images       samples dropped from the step because an image would not decode (data.skip_bad)
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

from data.files import write_text_atomic
from grpo.config import LogConfig

log = logging.getLogger(__name__)


WANDB_ID_FILE = "wandb-run-id.txt"  # a resumed run continues the same W&B run


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool, options: LogConfig | None = None,
                 config: dict | None = None):  # fmt: skip
        """``options``: the config's ``log`` section; ``config``: the resolved config, stored with a W&B run."""
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        options = options or LogConfig()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if options.tensorboard != "off":
            self._tb = _tensorboard_writer(self.run_dir / "tensorboard", required=options.tensorboard == "on")
        if options.wandb:
            self._wandb = _wandb_run(self.run_dir, options, config)

    def metrics(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        scalars = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, row["step"])
        if self._wandb is not None:
            self._wandb.log(scalars, step=row["step"])

    def samples(self, step: int, rows: list[dict]) -> None:
        if not self.enabled:
            return
        with open(self.run_dir / "samples.jsonl", "a") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **row}) + "\n")

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint's step, so the files read as one run. A torn
        last line (a kill during a write) is dropped; a broken line before it is an error naming it."""
        if not self.enabled:
            return
        for name in ("metrics.jsonl", "samples.jsonl"):
            path = self.run_dir / name
            if path.exists():
                lines = path.read_text().splitlines()
                kept = []
                for number, line in enumerate(lines, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        if number == len(lines):
                            log.warning("%s: dropped a torn last line (line %d)", path, number)
                            continue
                        raise ValueError(f"{path}: line {number} is not JSON") from None
                    if row["step"] <= step:
                        kept.append(line)
                write_text_atomic(path, "".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _tensorboard_writer(folder: Path, required: bool):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if required:
            raise ImportError(
                "log.tensorboard=on needs tensorboard: pip install -e '.[log]' (or log.tensorboard=off)"
            ) from None
        log.info("tensorboard is not installed (pip install -e '.[log]'): metrics go to metrics.jsonl only")
        return None
    log.info("TensorBoard events in %s", folder)
    return SummaryWriter(str(folder))


def _wandb_run(run_dir: Path, options: LogConfig, config: dict | None):
    """A W&B run logging into ``run_dir/wandb``; the mode (online / offline) is wandb's own, e.g. WANDB_MODE."""
    try:
        import wandb
    except ImportError:
        raise ImportError(
            "log.wandb=true needs wandb: pip install -e '.[wandb]' (or log.wandb=false)"
        ) from None
    id_file = run_dir / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id + "\n")
    run = wandb.init(project=options.wandb_project, name=options.wandb_run_name or str(run_dir),
                     id=run_id, resume="allow", dir=str(run_dir), config=config)  # fmt: skip
    log.info("Weights & Biases run %s (project %s, mode %s)", run_id, options.wandb_project,
             os.environ.get("WANDB_MODE", "online"))  # fmt: skip
    return run
