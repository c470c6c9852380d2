"""What a run writes as it goes (rank 0 only): metrics.jsonl, sample completions, and the same metrics as
TensorBoard events (``log.tensorboard``, the ``log`` extra) and to Weights & Biases (``log.wandb=true``;
``WANDB_MODE=offline`` keeps the run local for a later ``wandb sync``).

``metrics.jsonl`` holds one JSON object per logged optimizer step. The keys and what they tell:

    step                 optimizer steps done
    loss                 the minimized loss of the step, -J of eq. (1) (SFT: token cross-entropy)
    loss/<name>          every statistic the loss function returns, averaged over micro-batches and ranks;
                         grpo_loss's (grpo/loss.py): kl (mean per-token k3 to the reference, beta > 0),
                         clip_frac (= clip_frac_low + clip_frac_high, share of clipped tokens),
                         ratio_mean (1 on a fresh batch of rollouts), adv_mean, tokens, tis_weight_mean
                         (mean truncated importance weight, grpo.tis_cap)
    reward               mean total reward of the step's completions
    reward/<term>        mean unweighted value of each reward term (mccs, format, cef1, nlg, overlong)
    reward_std           spread of the total reward over all completions
    adv_std              spread of the advantages (near 0: no learning signal)
    frac_zero_std_groups fraction of groups whose G rewards are all equal (their advantages are exactly 0)
    completion_len       mean completion length in tokens
    truncated_frac       fraction of completions that hit max_new_tokens without EOS
    format_ok            fraction of completions with full format compliance (when the reward reports it)
    rollout/logprob_gap  mean |engine log-prob - recomputed log-prob| per completion token (static engine):
                         numerical drift between sampling and the loss, ~0
    entropy              the policy's mean token entropy (nats) over the completions, from the update pass
    dynamic/<name>       grpo.dynamic_sampling (grpo/experience.py), sums over ranks: filtered_groups (dropped
                         for zero spread), refilled_groups (put back when the rounds ran out), sampled_groups,
                         resample_rounds (extra draws this step)
    grad_norm            gradient norm before clipping
    lr                   learning rate used for the step
    step_time_s          wall time of the step
    tokens_per_s         completion tokens generated per second of the step (all ranks)
    time/<phase>         seconds per phase: generate, reward, logprob_ref, train (forward+backward), optim
    nonfinite_steps      steps so far whose loss or gradient norm was not finite, not applied (grpo/faults.py);
                         such a step's row holds null for each value that was not finite
    skipped_images       samples dropped from the step because an image would not decode (data.skip_bad)

The trainer keeps sums per micro-batch (``rollout_stats``, the update's loss sums); ``metrics_row`` reduces
them over ranks into the row.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from pathlib import Path

import numpy as np
import torch

from data.files import write_text_atomic
from grpo import distributed, faults
from grpo.config import LogConfig

log = logging.getLogger(__name__)


WANDB_ID_FILE = "wandb-run-id.txt"  # a resumed run continues the same W&B run


def rollout_stats(ro) -> dict[str, float]:
    """Sums over one micro-batch of rollouts (grpo.trainer.Rollout), turned into the step's means by
    ``metrics_row``."""
    rewards, groups = ro.rewards, ro.rewards.view(-1, ro.group_size)
    stats = {
        "n": float(rewards.numel()),
        "groups": float(groups.shape[0]),
        "reward": rewards.sum().item(),
        "reward_sq": (rewards**2).sum().item(),
        "adv_sq": (ro.advantages**2).sum().item(),
        "adv": ro.advantages.sum().item(),
        "zero_std_groups": (groups.max(dim=1).values == groups.min(dim=1).values).sum().item(),
        "completion_tokens": ro.completion_mask.sum().item(),
        "truncated": ro.truncated.sum().item(),
    }
    if ro.scored.format_ok is not None:
        stats["format_ok"] = float(np.sum(ro.scored.format_ok))
    for name, values in ro.scored.terms.items():
        stats[f"reward/{name}"] = float(np.sum(values))
    return stats


def logprob_gap_sum(recomputed: torch.Tensor, sampled: torch.Tensor, mask: torch.Tensor) -> float:
    """Sum over completion tokens of |log-prob the loss computes - log-prob the rollout engine computed|: both
    are log_softmax(logits / T) of the same tokens (LoRA dropout is 0 in GRPO), so this is numerical drift,
    logged per token as ``rollout/logprob_gap``."""
    return ((recomputed - sampled).abs() * mask).sum().item()


def update_sums(ro, logp: torch.Tensor, entropy: torch.Tensor) -> dict[str, float]:
    """Sums over one micro-batch of the update pass, per completion token in the row: the policy's entropy
    and, on the first recomputation of fresh rollouts' tokens (mu = 1), the engine's log-prob gap."""
    sums = {"entropy": (entropy.detach() * ro.completion_mask).sum().item()}
    if ro.old_logp is None and ro.sample_logp is not None:  # mu > 1: the old-policy pass measured it
        sums["logprob_gap"] = logprob_gap_sum(logp.detach(), ro.sample_logp, ro.completion_mask)
    return sums


def examples(ro) -> list[dict]:
    """A few decoded completions of a micro-batch of rollouts with their rewards, for samples.jsonl."""
    G = ro.group_size
    return [
        {"study_id": ro.samples[i // G].study_id, "reward": float(ro.scored.total[i]),
         "completion": ro.texts[i], "reference": ro.samples[i // G].report}
        for i in range(min(len(ro.texts), 2 * G))
    ]  # fmt: skip


def metrics_row(sums: dict, step: int, grad_norm: float, lr: float, step_time: float, device) -> dict:
    """Reduce the step's sums over ranks (collective) into the metrics.jsonl row: ``loss`` is summed (each
    rank logs its share), every ``loss/<name>`` averaged over micro-batches and ranks, ``time/<phase>`` this
    rank's own."""
    timings = {k: v for k, v in sums.items() if k.startswith("time/")}
    counts = {k: v for k, v in sums.items() if not k.startswith("time/")}
    total = distributed.all_reduce_sums(counts, device)
    row: dict = {"step": step, "loss": total["loss"]}
    micro_batches = max(total.get("micro_batches", 1.0), 1.0)
    for key in sorted(k for k in total if k.startswith("loss/")):
        row[key] = total[key] / micro_batches
    n = max(total.get("n", 0.0), 1.0)
    if "reward" in total:
        row["reward"] = total["reward"] / n
        for key in sorted(k for k in total if k.startswith("reward/")):
            row[key] = total[key] / n
        row["reward_std"] = math.sqrt(max(total["reward_sq"] / n - row["reward"] ** 2, 0.0))
        row["adv_std"] = math.sqrt(max(total["adv_sq"] / n - (total["adv"] / n) ** 2, 0.0))
        row["frac_zero_std_groups"] = total["zero_std_groups"] / max(total["groups"], 1.0)
        row["truncated_frac"] = total["truncated"] / n
    if "format_ok" in total:
        row["format_ok"] = total["format_ok"] / n
    row["completion_len"] = total.get("completion_tokens", 0.0) / n
    tokens = max(total.get("completion_tokens", 0.0), 1.0)  # per completion token
    if "logprob_gap" in total:
        row["rollout/logprob_gap"] = total["logprob_gap"] / tokens
    if "entropy" in total:
        row["entropy"] = total["entropy"] / tokens
    for key in sorted(k for k in total if k.startswith("dynamic/")):
        row[key] = total[key]
    row["skipped_images"] = int(total.get("skipped_images", 0.0))
    row["grad_norm"] = grad_norm
    row["lr"] = lr
    row["step_time_s"] = distributed.all_reduce_max(step_time, device)
    row["tokens_per_s"] = total.get("completion_tokens", 0.0) / max(row["step_time_s"], 1e-9)
    row.update(timings)
    return row


class RunLog:
    def __init__(
        self, run_dir: Path, enabled: bool, options: LogConfig | None = None, config: dict | None = None
    ):
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
        # one whole line or none (a full disk raises DiskFullError); NaN and inf are written as null
        faults.append_line(self.run_dir / "metrics.jsonl", json.dumps(_finite_or_none(row)))
        scalars = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, row["step"])
        if self._wandb is not None:
            self._wandb.log(scalars, step=row["step"])

    def samples(self, step: int, rows: list[dict]) -> None:
        if not self.enabled:
            return
        if rows:
            text = "\n".join(json.dumps(_finite_or_none({"step": step, **row})) for row in rows)
            faults.append_line(self.run_dir / "samples.jsonl", text)

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


def _finite_or_none(row: dict) -> dict:
    """The row with NaN and infinities as None (null): metrics.jsonl stays strict JSON on a non-finite step."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


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
    run = wandb.init(
        project=options.wandb_project,
        name=options.wandb_run_name or str(run_dir),
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        config=config,
    )
    log.info(
        "Weights & Biases run %s (project %s, mode %s)",
        run_id,
        options.wandb_project,
        os.environ.get("WANDB_MODE", "online"),
    )
    return run
