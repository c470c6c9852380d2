"""The package metadata agrees with the files it names."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def test_license_file_matches_the_declared_licence():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]["text"]
    assert declared == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a pointer to it


def test_extras_named_in_error_messages_exist_and_dev_stays_light():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("tensorboard") for req in extras["log"])
    assert any(req.startswith("wandb") for req in extras["wandb"])
    assert {req.split(">")[0] for req in extras["metrics"]} == {"bert-score", "radgraph"}
    assert not any(req.startswith(("wandb", "tensorboard", "radgraph")) for req in extras["dev"])
