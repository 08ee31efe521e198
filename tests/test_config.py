"""Configuration: defaults, every shipped YAML, unknown-key errors (API and command line)."""
import glob
import os

import pytest

from profd_plugin.config import ConfigKeyError, all_keys, get_default_config, setup_cfg
from profd_plugin.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


def test_default_config_has_host_and_plugin_keys():
    cfg = get_default_config()
    keys = set(all_keys(cfg))
    for k in ["model.name", "model.load_weights", "model.resume", "data.root", "data.sources", "data.targets",
              "data.save_dir", "train.lr", "train.max_epoch", "train.batch_size", "sampler.num_instances",
              "test.evaluate", "test.ranks", "loss.name", "profd.clip.stride", "profd.loss.visibility"]:
        assert k in keys, k
    assert cfg.profd.loss.alignment == 0.35 and cfg.profd.loss.visibility == 10.0  # official recipe


def test_every_plugin_key_has_a_comment():
    src = open(os.path.join(ROOT, "profd_plugin", "config.py")).read()
    for line in src.splitlines():
        s = line.strip()
        if s.startswith("p.") and "=" in s and "CN()" not in s:
            assert "#" in s, f"config key without a one-line comment: {s}"


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_yaml_in_configs_loads(path):
    cfg = setup_cfg(path)
    assert cfg.is_frozen()
    assert cfg.data.sources and cfg.data.targets


def test_configs_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"profd_synthetic.yaml", "profd_occ_duke.yaml", "profd_occ_reid.yaml", "profd_p_duke.yaml",
            "profd_market1501.yaml", "profd_dukemtmc.yaml"} <= names


def test_occluded_duke_config_is_the_official_profd_star_recipe():
    cfg = setup_cfg(os.path.join(ROOT, "configs", "profd_occ_duke.yaml"))
    assert cfg.profd.clip.stride == 12 and cfg.train.lr == 4e-5 and cfg.train.weight_decay == 5e-4
    assert "random_flip" not in cfg.data.transforms


def test_command_line_overrides_yaml():
    cfg = setup_cfg(CONFIGS[0], ["train.max_epoch", "3", "profd.clip.stride", "12"])
    assert cfg.train.max_epoch == 3 and cfg.profd.clip.stride == 12


def test_unknown_key_names_key_and_closest(tmp_path):
    with pytest.raises(ConfigKeyError) as e:
        setup_cfg(None, ["train.max_epochs", "3"])
    msg = str(e.value)
    assert "train.max_epochs" in msg and "train.max_epoch" in msg and "\n" not in msg

    bad = tmp_path / "bad.yaml"
    bad.write_text("profd:\n  loss:\n    visibilty: 1.0\n")
    with pytest.raises(ConfigKeyError) as e:
        setup_cfg(str(bad))
    assert "profd.loss.visibilty" in str(e.value) and "profd.loss.visibility" in str(e.value)


def test_odd_number_of_opts_and_wrong_type():
    with pytest.raises(ConfigError, match="pairs"):
        setup_cfg(None, ["train.lr"])
    with pytest.raises(ConfigError, match="train.max_epoch = 'many' in the command line: must be an integer"):
        setup_cfg(None, ["train.max_epoch", "'many'"])
    assert setup_cfg(None, ["train.lr", "1"]).train.lr == 1.0  # an int where a float is expected


def test_cli_unknown_key_exits_2_with_one_line(tmp_path, capsys):
    from test_main import MAIN

    config = os.path.join(ROOT, "configs", "profd_synthetic.yaml")
    code = MAIN.main(["--config-file", config, "train.max_epochs", "1", "data.save_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "train.max_epochs" in err[0] and "train.max_epoch" in err[0]


def test_cli_missing_config_file_exits_2(capsys):
    from test_main import MAIN

    assert MAIN.main(["--config-file", "does/not/exist.yaml"]) == 2
    assert "does/not/exist.yaml" in capsys.readouterr().err
