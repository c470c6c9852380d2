"""bench/table2.py's scheduler: a GRPO row starts only after its own seed's SFT, without waiting for the others."""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(ROOT))

from bench.table2 import after_sft  # noqa: E402


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_each_row_runs_after_its_own_sft_and_rows_do_not_wait_for_later_seeds(jobs):
    events: list[tuple[str, int]] = []
    lock = threading.Lock()

    def log(kind: str, seed: int) -> None:
        with lock:
            events.append((kind, seed))

    def sft(seed: int) -> None:
        log("sft start", seed)
        time.sleep(0.2 if seed == 2 else 0.02)  # the last seed's warm start is the slow one
        log("sft done", seed)

    def row(seed: int, name: str) -> str:
        log("row start", seed)
        return f"{name}-{seed}"

    tasks = [(seed, row, name) for seed in (0, 1, 2) for name in ("a", "b")]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = [future.result(timeout=10) for future in after_sft(pool, [0, 1, 2], sft, tasks)]

    assert results == ["a-0", "b-0", "a-1", "b-1", "a-2", "b-2"]  # in the order of the tasks
    for seed in (0, 1, 2):
        done = events.index(("sft done", seed))
        assert all(events.index(e) > done for e in events if e == ("row start", seed)), events
    if jobs > 1:  # a free worker starts seed 0's rows while seed 2's SFT is still running
        assert events.index(("row start", 0)) < events.index(("sft done", 2)), events


def test_table2_queues_its_rows_seed_by_seed_after_the_base():
    from bench.table2 import GRPO_ROWS, table_tasks

    tasks = table_tasks([0, 1, 2], "start", "grpo")
    assert tasks[0] == (0, "start", "base", True)
    seeds = [task[0] for task in tasks[1:]]
    assert seeds == sorted(seeds)  # no row of a later seed ahead of an earlier seed's: no worker waits early
    assert len(tasks) == 1 + 3 * (1 + len(GRPO_ROWS))
    assert [t[2] for t in tasks[1 : 2 + len(GRPO_ROWS)]] == ["SFT", *(name for name, _ in GRPO_ROWS)]
