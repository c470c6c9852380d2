"""train.py's command line: --help lists every config section and key, --print-config shows the result."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

import train
from grpo.config import TrainConfig, config_sections, load_config, to_dict


def test_help_names_every_section_key_and_where_it_is_documented(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--print-config" in text
    sections = config_sections()
    assert {name for name, _, _ in sections} >= {"(top level)", "model", "model.lora", "data.prompt", "log"}
    for name, cls, keys in sections:
        assert name in text and cls.__name__ in text
        assert all(key in text for key in keys)
    section_names = {name for name, _, _ in sections}
    top_level_keys = sections[0][2]
    for f in dataclasses.fields(TrainConfig):  # each key is listed, or is a section of its own
        assert f.name in top_level_keys or f.name in section_names


def test_print_config_prints_the_resolved_yaml_and_exits(capsys, tmp_path):
    overrides = ["sampling.group_size=8", "log.wandb=true", f"output_dir={tmp_path / 'never'}"]
    assert (
        train.main(
            [
                "--config",
                "configs/paper_iu_xray.yaml",
                "--print-config",
                "model.path=/m",
                "data.annotation=/a.json",
                *overrides,
            ]
        )
        == 0
    )
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = load_config(
        "configs/paper_iu_xray.yaml", ["model.path=/m", "data.annotation=/a.json", *overrides]
    )
    assert printed == to_dict(expected)
    assert printed["sampling"]["group_size"] == 8 and printed["model"]["lora"]["rank"] == 128
    assert not (tmp_path / "never").exists()  # nothing ran


def test_print_config_reports_a_bad_key(capsys):
    assert train.main(["--print-config", "sampling.group_sise=8"]) == 2
    assert "unknown key sampling.group_sise" in capsys.readouterr().err
