"""What a run writes as it goes (rank 0 only): metrics.jsonl, TensorBoard events, sample completions.

``metrics.jsonl`` holds one JSON object per logged optimizer step. The keys and what they tell:

    step                 optimizer steps done
    loss                 the minimized loss, -J of eq. (1) (SFT: token cross-entropy)
    reward               mean total reward of the step's completions
    reward/<term>        mean unweighted value of each reward term (mccs, format, cef1, nlg)
    reward_std           spread of the total reward over all completions
    adv_std              spread of the advantages (near 0: no learning signal)
    frac_zero_std_groups fraction of groups whose G rewards are all equal (their advantages are exactly 0)
    kl                   mean per-token k3 estimate of KL(policy || reference)
    clip_frac            fraction of completion tokens whose ratio was clipped (low + high)
    ratio_mean           mean importance ratio (1 when num_iterations = 1)
    completion_len       mean completion length in tokens
    truncated_frac       fraction of completions that hit max_new_tokens without EOS
    format_ok            fraction of completions with full format compliance (format reward == 1)
    grad_norm            gradient norm before clipping
    lr                   learning rate used for the step
    step_time_s          wall time of the step
    tokens_per_s         completion tokens generated per second of the step (all ranks)
    time/<phase>         seconds per phase: generate, reward, logprob_ref, train (forward+backward), optim
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._tb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            log.info("TensorBoard events in %s", self.run_dir / "tensorboard")
        except ImportError:
            log.info("tensorboard is not installed: metrics go to metrics.jsonl only")

    def metrics(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, row["step"])

    def samples(self, step: int, rows: list[dict]) -> None:
        if not self.enabled:
            return
        with open(self.run_dir / "samples.jsonl", "a") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **row}) + "\n")

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint's step, so the files read as one run."""
        if not self.enabled:
            return
        for name in ("metrics.jsonl", "samples.jsonl"):
            path = self.run_dir / name
            if path.exists():
                kept = [
                    line
                    for line in path.read_text().splitlines()
                    if line and json.loads(line)["step"] <= step
                ]
                path.write_text("".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
