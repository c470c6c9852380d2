"""Atomic writes: a file or folder appears whole or not at all (written to a temporary sibling, then renamed
over the target). The bottom layer: every package may import it, it imports nothing of ours."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path``: to ``.<name>.tmp`` beside it first, then renamed over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding=encoding)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(dst: str | Path, tmp: str | Path | None = None) -> Iterator[Path]:
    """``with atomic_dir(dst) as tmp:`` fill the folder ``tmp`` (created empty; default ``.tmp-<name>``
    beside ``dst``); when the block ends without an error, ``tmp`` replaces ``dst`` (removed first if
    present). On an error ``tmp`` stays for inspection and is cleared by the next attempt."""
    dst = Path(dst)
    tmp = Path(tmp) if tmp is not None else dst.with_name(f".tmp-{dst.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    yield tmp
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


def copy_dir_atomic(src: str | Path, dst: str | Path) -> None:
    """Copy the folder ``src`` to ``dst``, replacing ``dst`` atomically."""
    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
