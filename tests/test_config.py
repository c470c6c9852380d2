"""Config loading: defaults <- YAML (with `base:`) <- key=value overrides, and clear errors for bad values."""

from __future__ import annotations

import pytest

from grpo.config import ConfigError, load_config, parse_overrides, to_dict

REQUIRED = ["model.path=/ckpt", "data.annotation=/data/annotation.json"]


def test_overrides_parse_as_yaml_scalars_into_nested_keys():
    assert parse_overrides(["a.b=3", "c=null", "d=[1, 2]", "e=x"]) == {
        "a": {"b": 3},
        "c": None,
        "d": [1, 2],
        "e": "x",
    }


def test_override_sets_nested_values_and_keeps_other_defaults():
    cfg = load_config(None, [*REQUIRED, "sampling.group_size=8", "optim.betas=[0.9, 0.95]", "max_steps=3"])
    assert cfg.sampling.group_size == 8 and cfg.optim.betas == (0.9, 0.95) and cfg.max_steps == 3
    assert cfg.sampling.temperature == 1.0  # untouched default
    assert to_dict(cfg)["optim"]["betas"] == [0.9, 0.95]


def test_int_and_exponent_strings_are_accepted_where_a_float_is_declared():
    assert load_config(None, [*REQUIRED, "optim.lr=1"]).optim.lr == 1.0
    assert load_config(None, [*REQUIRED, "optim.lr=5e-6"]).optim.lr == 5e-6  # YAML 1.1 reads this as a string


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("foo=1", "unknown key foo"),
        ("sampling.group_sizee=4", "unknown key sampling.group_sizee"),
        ("sampling.group_size=1", "G >= 2"),
        ("sampling.group_size=four", "sampling.group_size: expected an integer"),
        ("sampling.temperature=0", "sampling.temperature"),
        ("grpo.aggregation=mean", "grpo.aggregation"),
        ("reward.weights={bleu: 1.0}", "unknown term 'bleu'"),
        ("reward.margin=1.0", "reward.margin"),
        ("reward.labeler=chexbert", "chexbert_path"),
        ("model.lora.dropout=1.5", "model.lora.dropout"),
        ("optim.betas=[0.9]", "optim.betas: expected a list of 2"),
        ("mode=rl", "mode: expected grpo or sft"),
        ("sft.target_template=no placeholder", "{report}"),
        ("grpo.num_iterations=2", "save_every"),
        ("grpo.adv_scale=std", "grpo.adv_scale: expected group, batch or none"),
        ("grpo.kl_clamp=0", "grpo.kl_clamp"),
        ("grpo.loss=gspo", "grpo.loss: expected grpo or module:function"),
        ("grpo.loss=grpo.nowhere:loss", "grpo.loss: cannot load 'grpo.nowhere:loss'"),
        ("grpo.loss=grpo.gspo:no_such_loss", "grpo.loss: cannot load"),
        ("grpo.advantage=ppo", "grpo.advantage: expected group, no_std, rloo or batch"),
        ("grpo.max_resample_rounds=-1", "grpo.max_resample_rounds: must be >= 0, got -1"),
        ("grpo.entropy_coef=-0.01", "grpo.entropy_coef: must be >= 0"),
        ("grpo.tis_cap=0", "grpo.tis_cap: must be > 0, got 0.0"),
        ("reward.normalize=per_group", "reward.normalize: expected none or per_term, got 'per_group'"),
        ("reward.overlong_penalty=0", "reward.overlong_penalty: must be in [1, sampling.max_new_tokens=256]"),
        (
            "reward.overlong_penalty=300",
            "reward.overlong_penalty: must be in [1, sampling.max_new_tokens=256]",
        ),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("[", r"\[")):
        load_config(None, [*REQUIRED, "save_every=3", override])


def test_missing_required_paths_are_named():
    with pytest.raises(ConfigError, match="model.path is required"):
        load_config(None, ["data.annotation=/a.json"])
    with pytest.raises(ConfigError, match="data.annotation is required"):
        load_config(None, ["model.path=/ckpt"])


def test_sft_mode_accepts_group_size_one():
    assert load_config(None, [*REQUIRED, "mode=sft", "sampling.group_size=1"]).mode == "sft"


def test_yaml_file_with_base_is_merged_and_errors_name_the_file(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "model: {path: /ckpt}\ndata: {annotation: /a.json}\nsampling: {group_size: 8}\n"
    )
    (tmp_path / "child.yaml").write_text("base: base.yaml\nsampling: {temperature: 0.7}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.sampling.group_size == 8 and cfg.sampling.temperature == 0.7
    (tmp_path / "bad.yaml").write_text("base: base.yaml\nsampling: {group_size: 1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: sampling.group_size"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "broken.yaml").write_text("sampling: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_shipped_configs_load(tmp_path):
    """Every recipe in configs/ parses; the paper recipes need the user's paths and say so."""
    from pathlib import Path

    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert configs, "no configs found"
    for path in configs:
        try:
            load_config(path)
        except ConfigError as err:
            assert "is required" in str(err), f"{path.name}: {err}"
            load_config(path, REQUIRED)


def test_advantage_estimator_follows_the_older_adv_scale_unless_set_and_a_contradiction_names_both():
    def estimator(*overrides):
        return load_config(None, [*REQUIRED, *overrides]).grpo.estimator

    assert estimator() == "group"
    assert estimator("grpo.adv_scale=none") == "no_std" and estimator("grpo.adv_scale=batch") == "batch"
    assert estimator("grpo.advantage=rloo") == "rloo"
    assert estimator("grpo.adv_scale=none", "grpo.advantage=no_std") == "no_std"  # the same estimator twice
    with pytest.raises(ConfigError, match="grpo.advantage=rloo and grpo.adv_scale=batch disagree"):
        load_config(None, [*REQUIRED, "grpo.adv_scale=batch", "grpo.advantage=rloo"])


def test_tis_cap_needs_the_static_engines_log_probs():
    assert load_config(None, [*REQUIRED, "grpo.tis_cap=2"]).grpo.tis_cap == 2.0
    with pytest.raises(
        ConfigError, match="grpo.tis_cap needs the rollout engine's log-probs: sampling.engine=static"
    ):
        load_config(None, [*REQUIRED, "grpo.tis_cap=2", "sampling.engine=hf"])


def test_every_toolkit_option_is_off_by_default():
    g, r = load_config(None, REQUIRED).grpo, load_config(None, REQUIRED).reward
    assert (g.advantage, g.dynamic_sampling, g.mask_truncated, g.entropy_coef, g.tis_cap) == (
        None,
        False,
        False,
        0.0,
        None,
    )
    assert (r.normalize, r.overlong_penalty) == ("none", None)
