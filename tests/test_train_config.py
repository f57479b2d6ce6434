"""Run configs: presets, dotted overrides, validation errors that name the key, YAML round trip."""

from __future__ import annotations

import pytest
import yaml

from faceage.train.config import check_resumable, from_dict, load_config, presets


def test_presets_are_bundled_and_load():
    assert {"ragan_utk128", "tiny"} <= set(presets())
    cfg = load_config("ragan_utk128")
    assert (cfg.model, cfg.train.image_size, cfg.train.batch_size) == ("ragan", 128, 16)
    assert cfg.model_config.image_size == 128
    assert cfg.model_config.num_groups == cfg.scheme.num_groups == 10


def test_overrides_are_parsed_as_yaml_and_applied():
    cfg = load_config(
        "tiny", ["train.batch_size=2", "train.betas=[0.5, 0.9]", "model.channels=4", "train.precision=fp32"]
    )
    assert cfg.train.batch_size == 2 and cfg.train.betas == (0.5, 0.9) and cfg.train.precision == "fp32"
    assert cfg.model_config.channels == 4
    assert load_config("tiny", ["train.lr=1"]).train.lr == 1.0  # an int where a float is expected is fine


def test_scheme_override_sets_the_number_of_groups():
    cfg = load_config("tiny", ["train.scheme=0,30,60"])
    assert cfg.model_config.num_groups == 3


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config("tiny", ["train.steps=7"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert from_dict(yaml.safe_load(path.read_text())) == cfg
    assert load_config(path) == cfg  # a YAML file works wherever a preset name does


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.bach_size=2", r"unknown config key train\.bach_size; valid keys in 'train': scheme, .*batch_size"),
        ("model.chanels=2", r"unknown config key model\.chanels; valid keys in 'model': .*channels"),
        ("trian.steps=2", r"unknown config section 'trian' .*valid: model, train"),
        ("train.steps", r"must look like section\.key=value"),
        ("train.batch_size=many", r"train\.batch_size must be int, got 'many'"),
        ("train.betas=[0.5]", r"train\.betas must have 2 items"),
        ("train.batch_size=0", r"train\.batch_size must be >= 1"),
        ("model.image_size=64", r"model\.image_size=64 disagrees .*\(32\)"),
        ("model.name=ragn", r"unknown model 'ragn'; known: .*ragan"),
        ("train.scheme=utk99", r"unknown age scheme 'utk99'; known: .*utk14"),
    ],
)
def test_bad_configs_name_what_is_wrong(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("tiny", [override])


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="no config 'ragan_utk1024'.*presets: .*ragan_utk128"):
        load_config("ragan_utk1024")


def test_resuming_may_change_training_settings_and_loss_weights_but_not_the_model():
    saved = load_config("tiny")
    check_resumable(saved, load_config("tiny", ["train.steps=100", "train.batch_size=8"]), "run")
    check_resumable(saved, load_config("tiny", ["model.w_cls=3", "model.w_cyc=5"]), "run")
    cycle = load_config("cycle_utk128")  # a loss setting the model lists as tunable may change too
    check_resumable(cycle, load_config("cycle_utk128", ["model.age_sigma=1"]), "run")
    with pytest.raises(ValueError, match="\\(changed: bottleneck_blocks\\)"):
        check_resumable(cycle, load_config("cycle_utk128", ["model.bottleneck_blocks=1"]), "run")
    with pytest.raises(ValueError, match="cannot change model on resume \\(changed: channels\\)"):
        check_resumable(saved, load_config("tiny", ["model.channels=4"]), "run")
    with pytest.raises(ValueError, match="train.scheme cannot change on resume"):
        check_resumable(saved, load_config("tiny", ["train.scheme=0,50"]), "run")


def test_precision_is_validated_and_a_run_config_records_what_auto_became(tmp_path):
    with pytest.raises(ValueError, match=r"train\.precision must be one of auto, fp32, bf16, got 'fp16'"):
        load_config("tiny", ["train.precision=fp16"])
    cfg = load_config("tiny")
    assert cfg.train.precision == "auto"
    text = cfg.to_yaml({"precision": "fp32", "why": "auto: test"})
    assert yaml.safe_load(text)["resolved"] == {"precision": "fp32", "why": "auto: test"}
    assert from_dict(yaml.safe_load(text)) == cfg  # read back, the resolved section is re-derived, not kept


def test_checkpoints_from_before_train_precision_still_load():
    data = load_config("tiny").to_dict()
    for old, new in ((True, "bf16"), (False, "fp32")):
        train = {k: v for k, v in data["train"].items() if k != "precision"} | {"bf16": old}
        assert from_dict({**data, "train": train}).train.precision == new


def test_a_new_run_without_config_trains_the_default_preset(synth_cache32, tmp_path, capsys):
    from faceage.cli import main
    from faceage.cli.train import DEFAULT_PRESET

    assert DEFAULT_PRESET == "ragan_utk128" and load_config(DEFAULT_PRESET).train.image_size == 128
    # The preset trains at 128 px, so on this 32 px cache the error shows it was the one chosen.
    assert main(["train", "--data", str(synth_cache32), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "holds 32 px faces but train.image_size is 128" in err, err
    out = tmp_path / "small"
    args = ["train", "--data", str(synth_cache32), "--out", str(out), "--set", "train.image_size=32", "--steps", "1"]
    assert main([*args, "--set", "train.num_workers=0", "--set", "train.sample_every=1"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert from_dict(saved) == load_config(
        DEFAULT_PRESET, ["train.image_size=32", "train.steps=1", "train.num_workers=0", "train.sample_every=1"]
    )
    assert saved["resolved"]["precision"] in ("fp32", "bf16") and saved["resolved"]["why"].startswith("auto: ")
