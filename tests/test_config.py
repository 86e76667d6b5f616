import pytest

from hybengine.config import Config, ConfigError, apply_model_preset, config_from_dict, load_config, to_dict

from tiny_run import run_cli


def test_defaults_validate_and_round_trip():
    cfg = load_config()
    assert config_from_dict(to_dict(cfg)) == cfg


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  steps: 7\nmodel:\n  channel_mult: [1, 2, 4]\n")
    cfg = load_config(f, ["train.steps=9", "objective.w_mask=0.5", "train.precision=bf16"])
    assert cfg.train.steps == 9 and cfg.objective.w_mask == 0.5 and cfg.model.channel_mult == [1, 2, 4]
    assert cfg.train.precision == "bf16"


@pytest.mark.parametrize("override, names", [
    (["train.stepz=3"], ["train.stepz", "steps"]),          # unknown key: names it and lists allowed ones
    (["trian.steps=3"], ["trian", "train"]),                # unknown section
    (["train.steps=abc"], ["train.steps", "integer"]),      # wrong type
    (["train.steps=2.5"], ["train.steps", "integer"]),
    (["train.progress=maybe"], ["train.progress", "true or false"]),
    (["objective.mode=hybird"], ["objective.mode", "hybrid, supervised, denoise"]),  # not a choice
    (["train.steps=0"], ["train.steps", ">= 1"]),            # impossible value
    (["data.ignore_index=1"], ["data.ignore_index", "collides"]),
    (["data.image_channels=2"], ["data.image_channels", "1 or 3"]),
    (["train.steps"], ["section.key=value"]),
])
def test_bad_config_names_the_key(override, names):
    with pytest.raises(ConfigError) as e:
        load_config(None, override)
    for name in names:
        assert name in str(e.value)


def test_bad_yaml_file_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    f.write_text("train:\n  steps: 5\n  bogus: 1\n")
    with pytest.raises(ConfigError, match="train.bogus"):
        load_config(f)


def test_preset_fills_and_checks_groups():
    m = apply_model_preset(Config().model)
    assert m.channels == 32 and m.channel_mult == [1, 2]
    with pytest.raises(ConfigError, match="model.groups"):
        apply_model_preset(load_config(None, ["model.groups=5"]).model)


def test_cli_dry_run_and_error_exit():
    ok = run_cli(["hybengine/train.py", "--dry-run", "train.steps=11"])
    assert ok.returncode == 0 and "steps: 11" in ok.stdout
    bad = run_cli(["hybengine/train.py", "--dry-run", "optim.lrr=1"])
    assert bad.returncode == 2 and "optim.lrr" in bad.stderr


def test_the_renamed_backend_key_is_still_read_with_one_line(tmp_path, caplog):
    """train.engine became train.backend: old YAML files, overrides and saved run configs still load."""
    from hybengine.config import config_diff, config_from_dict, load_config, to_dict

    old = tmp_path / "old.yaml"
    old.write_text("train:\n  engine: plain\n")
    with caplog.at_level("WARNING", logger="hybengine.config"):
        assert load_config(old).train.backend == "plain"
        assert load_config(None, ["train.engine=deepspeed"]).train.backend == "deepspeed"
    assert caplog.text.count("train.engine was renamed train.backend") == 2
    saved = to_dict(load_config(None, ["train.backend=plain"]))
    saved["train"]["engine"] = saved["train"].pop("backend")  # a run saved before the rename
    assert config_from_dict(saved).train.backend == "plain"
    assert config_diff(load_config(None, ["train.backend=plain"]), saved) == []
