"""Typed config: presets, overrides, strict validation."""

from __future__ import annotations

import pytest

from camssl.config import TrainConfig, dump_yaml, from_dict, load_config, preset_names, read_yaml
from camssl.errors import ConfigError


def test_every_preset_loads_and_validates():
    assert {"demo", "cpu", "paper"} <= set(preset_names())
    for name in preset_names():
        cfg = load_config(name)
        assert isinstance(cfg, TrainConfig)


def test_demo_is_default_and_uses_embedded_data():
    cfg = load_config()
    assert cfg.data.source == "mini"


def test_overrides_are_typed():
    cfg = load_config("demo", ["optim.lr=0.05", "split.ratio=2", "method.layers=layer2,layer3", "model.width=1"])
    assert cfg.optim.lr == 0.05 and isinstance(cfg.split.ratio, float) and cfg.split.ratio == 2.0
    assert cfg.method.layers == ["layer2", "layer3"]
    assert cfg.model.width == 1.0


@pytest.mark.parametrize(
    "override, needle",
    [
        ("optim.lrr=0.1", "optim.lrr"),
        ("nonsense.x=1", "nonsense"),
        ("optim.schedule=linear", "cosine, onecycle, constant"),
        ("optim.epochs=ten", "optim.epochs"),
        ("optim.epochs=0", "optim.epochs"),
        ("method.name=fixmatch", "pseudo_label"),
        ("model.name=vgg", "resnet18"),
        ("method.grad_mode=half", "detach-weights"),
        ("optim.momentum=1.5", "optim.momentum"),
        ("model.channels_last=maybe", "true or false"),
        ("device=tpu", "device"),
    ],
)
def test_bad_values_name_the_key_and_allowed_values(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config("demo", [override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_yaml_round_trip(tmp_path):
    cfg = load_config("cpu", ["seed=3"])
    p = tmp_path / "c.yaml"
    p.write_text(dump_yaml(cfg))
    again = from_dict(TrainConfig, read_yaml(p))
    assert again == cfg


def test_base_inheritance_and_unknown_preset(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("base: cpu\noptim:\n  epochs: 3\n")
    cfg = load_config(str(p))
    assert cfg.optim.epochs == 3 and cfg.split.n_labeled == 5000
    with pytest.raises(ConfigError, match="demo"):
        load_config("no-such-preset")


def test_a_sweep_spec_is_not_a_training_config():
    with pytest.raises(ConfigError, match="camssl sweep"):
        load_config("table1-cpu")


# ---------------------------------------------------------------- per-method configuration


def test_each_method_parses_its_own_section():
    from camssl.methods.gradcam import GradCAMConfig
    from camssl.methods.pseudo_label import PseudoLabelConfig
    from camssl.methods.supervised import SupervisedConfig

    assert type(load_config("demo").method) is GradCAMConfig
    sup = load_config("demo", ["method.name=supervised"])  # the demo preset's gradcam fields are dropped
    assert type(sup.method) is SupervisedConfig and "layers" not in sup.to_dict()["method"]
    pl = load_config("demo", ["method.name=pseudo_label", "method.threshold=0.9"])
    assert type(pl.method) is PseudoLabelConfig and pl.method.threshold == 0.9
    assert sup.diagnostic_layer() == "layer3" and load_config("demo", ["method.layers=layer2"]).diagnostic_layer() == "layer2"
    assert load_config("demo", ["method.name=supervised", "map_layer=layer1"]).diagnostic_layer() == "layer1"


def test_method_keys_are_checked_against_the_chosen_method():
    with pytest.raises(ConfigError) as e:
        load_config("demo", ["method.name=supervised", "method.gamma=2"])
    assert "method.gamma" in str(e.value) and "for method supervised" in str(e.value) and "alpha" in str(e.value)
    with pytest.raises(ConfigError, match="for method gradcam: .*grad_mode"):
        load_config("demo", ["method.gama=2"])
    with pytest.raises(ConfigError, match="method.name='nope' is unknown; choose one of: .*gradcam, .*pseudo_label, .*supervised"):
        load_config("demo", ["method.name=nope"])


def test_a_preset_key_that_no_method_has_is_refused(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("method:\n  name: gradcam\n  layerz: [layer3]\n")
    with pytest.raises(ConfigError, match="unknown config key method.layerz"):
        load_config(str(preset), ["method.name=supervised"])


def test_method_config_builds_one_config_and_names_bad_fields():
    from camssl.config import method_config

    assert method_config("gradcam", layers=["layer2"]).layers == ["layer2"]
    with pytest.raises(ConfigError, match="valid keys for method pseudo_label"):
        method_config("pseudo_label", layers=["layer2"])
