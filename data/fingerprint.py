"""What a run was trained on, in a few hashes: the annotation file, the synthetic world's parameters and the
list of images (sorted relative paths with their sizes). A run records its fingerprint when it starts; a
resume compares the data as it is now with it, so a changed annotation or image folder is noticed before
the model loads instead of silently mixing two datasets in one run (grpo/run_dir.py).

Hashing the images' list costs one ``stat`` per image, never a read of the pixels.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

ENTRIES = ("annotation", "world", "images")


class DataDriftError(ValueError):
    """``--resume`` on data that differs from the run's; the message names what changed."""


def file_digest(path: Path) -> dict:
    """``{"size", "sha256"}`` of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"size": Path(path).stat().st_size, "sha256": digest.hexdigest()}


def images_digest(paths: Iterable[Path], root: Path | None = None) -> dict:
    """``{"count", "bytes", "sha256"}`` of the distinct images: each one's path (relative to ``root`` when
    under it) and size, sorted. A missing file counts with size -1."""
    rows = []
    for path in set(map(Path, paths)):
        try:
            name = path.relative_to(root).as_posix() if root is not None else path.as_posix()
        except ValueError:
            name = path.as_posix()
        try:
            size = path.stat().st_size
        except OSError:
            size = -1
        rows.append((name, size))
    rows.sort()
    digest = hashlib.sha256("\n".join(f"{name}\t{size}" for name, size in rows).encode())
    return {"count": len(rows), "bytes": sum(max(s, 0) for _, s in rows), "sha256": digest.hexdigest()}


def world_digest(params: Mapping | None) -> dict | None:
    """The synthetic world's generation parameters and their sha256 (None: not a synthetic world)."""
    if not params:
        return None
    text = json.dumps(dict(params), sort_keys=True)
    return {"params": dict(params), "sha256": hashlib.sha256(text.encode()).hexdigest()}


def fingerprint(
    annotation: Path,
    image_paths: Iterable[Path],
    images_root: Path | None = None,
    world: Mapping | None = None,
) -> dict:
    """The run's data fingerprint: ``annotation``, ``world`` (or None) and ``images``."""
    return {
        "annotation": file_digest(Path(annotation)),
        "world": world_digest(world),
        "images": images_digest(image_paths, images_root),
    }


def changes(saved: Mapping, current: Mapping) -> dict[str, tuple[object, object]]:
    """The entries that differ between two fingerprints -> (saved, current). An entry the saved fingerprint
    lacks (a run recorded before it was added) is not compared."""
    return {
        name: (saved[name], current.get(name))
        for name in ENTRIES
        if name in saved and saved[name] != current.get(name)
    }


def _short(entry: object) -> str:
    if not isinstance(entry, Mapping):
        return "none"
    parts = []
    if "count" in entry:
        parts.append(f"{entry['count']} files")
    if "size" in entry:
        parts.append(f"{entry['size']} bytes")
    if "params" in entry:
        parts.append(json.dumps(entry["params"], sort_keys=True))
    if "sha256" in entry:
        parts.append(f"sha256 {str(entry['sha256'])[:12]}")
    return ", ".join(parts)


def check(saved: Mapping, current: Mapping, allowed: bool) -> dict[str, tuple[object, object]]:
    """The changes (see :func:`changes`) when ``allowed`` (``--allow-config-change data``), else
    DataDriftError naming each changed entry with its old and new size and hash."""
    found = changes(saved, current)
    if found and not allowed:
        listed = "; ".join(f"{name} ({_short(old)} -> {_short(new)})" for name, (old, new) in found.items())
        raise DataDriftError(
            f"--resume on data that changed since the run started: {listed}; resume on the run's data, or "
            "accept with --allow-config-change data"
        )
    return found
