"""The packages' layers (docs/design.md, "Packages and the direction of imports") and no import cycles.

Every ``.py`` file of the repository is read with ``ast``; every import of ours, at module level or inside a
function, is an arrow from the file's module to the module it names. An arrow must point down the table
below or stay inside its own layer, and the arrows between modules (and between packages) must not close a
cycle. A failure names the file, the line and the arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SKIPPED_DIRS = {"runs", "outputs", "exports", "build", "dist", "__pycache__"}

# layer -> the layers (or single modules) it may import besides its own. ``top`` is the commands and
# everything beside them (train.py, evaluate.py, export.py, demo/, bench/, tests/): they may import anything,
# and nothing in a package may import them.
VOCABULARY = "vocabulary"  # rewards/vocabulary.py: the 14 observations, their codes, the CSV convention
REWARDS, DATA, MODEL, GRPO, EVALUATION = "rewards", "data", "model", "grpo", "evaluation"
TOP = "top"
ALLOWED: dict[str, set[str]] = {
    VOCABULARY: set(),
    REWARDS: {VOCABULARY},
    DATA: {VOCABULARY},
    MODEL: {VOCABULARY, DATA},
    GRPO: {VOCABULARY, REWARDS, DATA, MODEL},
    # grpo's config, checkpoints, run folder and torchrun plumbing, never its trainer
    EVALUATION: {
        VOCABULARY,
        REWARDS,
        DATA,
        MODEL,
        "grpo.config",
        "grpo.checkpoint",
        "grpo.distributed",
        "grpo.run_dir",
    },
}


def layer_of(module: str) -> str:
    """The layer of a module of ours (dotted name from the repository root)."""
    top = module.split(".")[0]
    # rewards/__init__.py runs whenever the vocabulary is imported, so it keeps the vocabulary's rule
    if module in ("rewards", "rewards.vocabulary"):
        return VOCABULARY
    return top if top in (REWARDS, DATA, MODEL, GRPO, EVALUATION) else TOP


def may_import(source: str, target: str) -> bool:
    """Whether module ``source`` may import module ``target`` (both ours)."""
    source_layer, target_layer = layer_of(source), layer_of(target)
    if source_layer in (TOP, target_layer):
        return True
    allowed = ALLOWED[source_layer]
    return target_layer in allowed or target in allowed


# ------------------------------------------------------------------------------------------------ reading
def python_files(root: Path) -> list[Path]:
    return sorted(
        path
        for path in root.rglob("*.py")
        if not any(part.startswith(".") or part in SKIPPED_DIRS for part in path.relative_to(root).parts[:-1])
    )


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(name: str, modules: set[str], script_package: str) -> str | None:
    """The module of ours that ``import name`` loads, or None (not ours). A name is looked up from the
    repository root, then from the importing file's folder (scripts in bench/ and tests/ import their
    neighbours by bare name)."""
    for candidate in (name, f"{script_package}.{name}" if script_package else name):
        if candidate in modules:
            return candidate
    return None


def import_arrows(root: Path) -> list[tuple[str, int, str, str]]:
    """``(file, line, importing module, imported module)`` for every import of ours under ``root``."""
    files = python_files(root)
    modules = {module_name(path, root) for path in files}
    arrows = []
    for path in files:
        source = module_name(path, root)
        is_package = path.name == "__init__.py"
        package = source if is_package else source.rpartition(".")[0]
        script_package = path.parent.relative_to(root).as_posix().replace("/", ".").strip(".")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the package, up level - 1 packages
                    base = package.split(".") if package else []
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    stem = node.module or ""
                # ``from pkg import mod`` imports the module pkg.mod when there is one, else names of pkg
                names = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
            for name in dict.fromkeys(names):
                target = resolve(name, modules, script_package)
                if target is not None and target != source:
                    arrows.append((path.relative_to(root).as_posix(), node.lineno, source, target))
    return arrows


# ------------------------------------------------------------------------------------------------ checking
def layer_violations(arrows: list[tuple[str, int, str, str]]) -> list[str]:
    return [
        f"{file}:{line}: {source} -> {target} ({layer_of(source)} may not import {layer_of(target)})"
        for file, line, source, target in arrows
        if not may_import(source, target)
    ]


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a closed path) per strongly connected component with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    cycles = []
    for component in components:  # a closed path through the component, found breadth-first
        members, start = set(component), min(component)
        previous: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in previous:
            nxt_frontier = []
            for node in frontier:
                for nxt in sorted(edges.get(node, ())):
                    if nxt in members and nxt not in previous:
                        previous[nxt] = node
                        nxt_frontier.append(nxt)
            frontier = nxt_frontier
        path, node = [start], previous[start]
        while node != start:
            path.append(node)
            node = previous[node]
        cycles.append([start, *reversed(path[1:]), start])
    return cycles


def cycle_reports(arrows: list[tuple[str, int, str, str]]) -> list[str]:
    where: dict[str, dict[tuple[str, str], str]] = {"modules": {}, "packages": {}}
    module_edges: dict[str, set[str]] = {}
    package_edges: dict[str, set[str]] = {}
    for file, line, source, target in arrows:
        where["modules"].setdefault((source, target), f"{file}:{line}")
        module_edges.setdefault(source, set()).add(target)
        source_package, target_package = source.split(".")[0], target.split(".")[0]
        if source_package != target_package:
            where["packages"].setdefault((source_package, target_package), f"{file}:{line}")
            package_edges.setdefault(source_package, set()).add(target_package)
    reports = []
    for kind, edges in (("modules", module_edges), ("packages", package_edges)):
        for cycle in find_cycles(edges):
            steps = ", ".join(f"{a} -> {b} ({where[kind][a, b]})" for a, b in zip(cycle, cycle[1:]))
            reports.append(f"import cycle between {kind}: {steps}")
    return sorted(reports)


# ------------------------------------------------------------------------------------------------ tests
def test_every_import_follows_the_layers():
    violations = layer_violations(import_arrows(REPO))
    assert not violations, "imports that break the layers (docs/design.md):\n" + "\n".join(violations)


def test_no_import_cycles():
    cycles = cycle_reports(import_arrows(REPO))
    assert not cycles, "\n".join(cycles)


def test_the_scan_sees_the_code():
    """A scan that saw nothing would pass: check it sees known arrows, function-level ones included."""
    arrows = {(source, target) for _, _, source, target in import_arrows(REPO)}
    assert ("grpo.trainer", "model.loading") in arrows
    assert ("data.synthetic", "rewards.vocabulary") in arrows
    assert ("grpo.config", "data.r2gen") in arrows  # imported inside a function
    assert ("evaluation.generate", "grpo.distributed") in arrows  # ``from grpo import distributed``
    assert ("train", "demo.base") in arrows


def test_the_table_itself_points_one_way():
    layer_edges = {layer: {t for t in targets if "." not in t} for layer, targets in ALLOWED.items()}
    assert find_cycles(layer_edges) == []


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_the_checker_fails_on_an_upward_arrow_and_on_a_cycle(tmp_path):
    _write(
        tmp_path,
        {
            "rewards/__init__.py": "",
            "rewards/vocabulary.py": "import numpy\n",
            "rewards/combine.py": "from rewards.vocabulary import X\n",
            "data/__init__.py": "",
            "data/r2gen.py": "from rewards.vocabulary import X\n\n\ndef f():\n    from grpo import trainer\n",
            "data/prompts.py": "from rewards import combine\nimport data.batching\n",
            "data/batching.py": "from .prompts import render\n",
            "grpo/__init__.py": "",
            "grpo/trainer.py": "from data.r2gen import Sample\nfrom rewards.combine import build\n",
            "evaluation/__init__.py": "",
            "evaluation/score.py": "from grpo.trainer import Trainer\nimport torch\n",
            "train.py": "from grpo.trainer import Trainer\n",
        },
    )
    violations = layer_violations(import_arrows(tmp_path))
    assert violations == [
        "data/prompts.py:1: data.prompts -> rewards.combine (data may not import rewards)",
        "data/r2gen.py:5: data.r2gen -> grpo.trainer (data may not import grpo)",
        "evaluation/score.py:1: evaluation.score -> grpo.trainer (evaluation may not import grpo)",
    ]
    cycles = cycle_reports(import_arrows(tmp_path))
    assert cycles == [
        "import cycle between modules: data.batching -> data.prompts (data/batching.py:1), "
        "data.prompts -> data.batching (data/prompts.py:2)",
        "import cycle between modules: data.r2gen -> grpo.trainer (data/r2gen.py:5), "
        "grpo.trainer -> data.r2gen (grpo/trainer.py:1)",
        "import cycle between packages: data -> grpo (data/r2gen.py:5), grpo -> data (grpo/trainer.py:1)",
    ]


def test_the_checker_passes_a_tree_that_keeps_the_layers(tmp_path):
    _write(
        tmp_path,
        {
            "rewards/__init__.py": "",
            "rewards/vocabulary.py": "",
            "rewards/combine.py": "from rewards.vocabulary import X\n",
            "data/__init__.py": "",
            "data/r2gen.py": "from rewards.vocabulary import X\n",
            "model/__init__.py": "",
            "model/loading.py": "from data.r2gen import Sample\n",
            "grpo/__init__.py": "",
            "grpo/config.py": "from rewards.combine import TERMS\n",
            "evaluation/__init__.py": "",
            "evaluation/generate.py": "from grpo import config\nfrom model.loading import load\n",
            "export.py": "from evaluation.generate import resolve\n",
        },
    )
    arrows = import_arrows(tmp_path)
    assert ("evaluation.generate", "grpo.config") in {(s, t) for _, _, s, t in arrows}
    assert layer_violations(arrows) == [] and cycle_reports(arrows) == []
