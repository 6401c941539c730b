"""Typed config: presets, overrides, strict validation."""

from __future__ import annotations

import dataclasses
import re

import pytest

from camssl.config import TrainConfig, dump_yaml, from_dict, load_config, method_config, preset_names, read_yaml
from camssl.errors import ConfigError
from conftest import fails


def test_every_preset_loads_and_validates():
    assert {"demo", "cpu", "paper"} <= set(preset_names())
    for name in preset_names():
        cfg = load_config(name)
        assert isinstance(cfg, TrainConfig)


def test_demo_is_default_and_uses_embedded_data():
    cfg = load_config()
    assert cfg.data.source == "mini"


def test_overrides_are_typed():
    cfg = load_config("demo", ["optim.lr=0.05", "split.ratio=2", "method.gradcam.layers=layer2,layer3",
                               "model.width=1"])
    assert cfg.optim.lr == 0.05 and isinstance(cfg.split.ratio, float) and cfg.split.ratio == 2.0
    assert cfg.method.gradcam.layers == ["layer2", "layer3"]
    assert cfg.model.width == 1.0


@pytest.mark.parametrize(
    "override, needle",
    [
        ("optim.lrr=0.1", "optim.lrr"),
        ("nonsense.x=1", "nonsense"),
        ("optim.schedule=linear", "cosine, onecycle, constant"),
        ("optim.epochs=ten", "optim.epochs"),
        ("optim.epochs=0", "optim.epochs"),
        ("method.name=mixmatch", "fixmatch, gradcam"),
        ("model.name=vgg", "resnet18"),
        ("method.gradcam.grad_mode=half", "detach-weights"),
        ("method.pseudo.threshold=1.5", "method.pseudo.threshold"),
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
    pl = load_config("demo", ["method.name=pseudo_label", "method.pseudo.threshold=0.9"])
    assert type(pl.method) is PseudoLabelConfig and pl.method.pseudo.threshold == 0.9
    assert pl.method.pseudo.anchor == "original" and "gradcam" not in pl.to_dict()["method"]
    assert sup.diagnostic_layer() == "layer3"
    assert load_config("demo", ["method.gradcam.layers=layer2"]).diagnostic_layer() == "layer2"
    assert load_config("demo", ["method.name=supervised", "map_layer=layer1"]).diagnostic_layer() == "layer1"


def test_method_keys_are_checked_against_the_chosen_method():
    with pytest.raises(ConfigError) as e:
        load_config("demo", ["method.name=supervised", "method.gamma=2"])
    assert "method.gamma" in str(e.value) and "for method supervised" in str(e.value) and "alpha" in str(e.value)
    with pytest.raises(ConfigError, match="for method gradcam: alpha, cam, gradcam, name, pseudo$"):
        load_config("demo", ["method.gama=2"])
    with pytest.raises(ConfigError, match=r"unknown config key method.gradcam.grad_mod; valid keys in method.gradcam: "
                                          r"distance, grad_mode, layers"):
        load_config("demo", ["method.gradcam.grad_mod=full"])
    with pytest.raises(ConfigError, match="method.name='nope' is unknown; choose one of: .*gradcam, .*pseudo_label, .*supervised"):
        load_config("demo", ["method.name=nope"])


def test_a_preset_key_that_no_method_has_is_refused(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("method:\n  name: gradcam\n  layerz: [layer3]\n")
    with pytest.raises(ConfigError, match="unknown config key method.layerz"):
        load_config(str(preset), ["method.name=supervised"])


def test_method_config_builds_one_config_and_names_bad_fields():
    cfg = method_config("gradcam", gradcam={"layers": ["layer2"], "grad_mode": "full"}, pseudo={"threshold": 0.95})
    assert cfg.gradcam.layers == ["layer2"] and cfg.gradcam.grad_mode == "full" and cfg.pseudo.threshold == 0.95
    assert cfg.gradcam.norm == "minmax" and cfg.pseudo.weight == 1.0  # the section's other fields keep their defaults
    with pytest.raises(ConfigError, match="valid keys for method pseudo_label"):
        method_config("pseudo_label", gradcam={"layers": ["layer2"]})
    with pytest.raises(ConfigError, match="method.gradcam.layerz"):
        method_config("gradcam", gradcam={"layerz": ["layer2"]})


# ---------------------------------------------------------------- keys renamed when each loss term got its section


@pytest.mark.parametrize("method, override, new", [
    ("gradcam", "method.gamma=2", "method.gradcam.weight"),
    ("pseudo_label", "method.cam_weight=1", "method.cam.weight"),
    ("vat", "method.vat_weight=0.3", "method.vat.weight"),
    ("lga", "method.rampup_epochs=2", "method.ramp_epochs (and method.vat.ramp_epochs)"),
])
def test_an_old_key_is_one_line_naming_its_new_spelling(method, override, new, tmp_path, capsys):
    message = f"config key {override.split('=')[0]} was renamed: write {new} instead"
    with pytest.raises(ConfigError) as e:
        load_config("demo", [f"method.name={method}", override])
    assert str(e.value) == message
    preset = tmp_path / "old.yaml"  # the same in a config file of one's own
    key, value = override.removeprefix("method.").split("=")
    preset.write_text(f"base: demo\nmethod:\n  name: {method}\n  {key}: {value}\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        load_config(str(preset))
    out = tmp_path / "run"
    assert fails(["train", "--method", method, override, "--out", str(out)], capsys) == f"error: {message}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.yaml"]  # nothing written


def test_every_renamed_key_is_refused_by_every_method_that_has_its_section():
    from camssl.methods import METHODS

    checked = set()
    for name, m in METHODS.items():
        fields = {f.name for f in dataclasses.fields(m.Config)}
        for old, new in m.Config.RENAMED.items():
            if old in fields or re.split(r"[. ]", new)[0] not in fields:
                continue  # the method's own field of that name, or a section it does not have
            with pytest.raises(ConfigError, match=f"^config key method.{old} was renamed: write "
                                                  f"method.{re.escape(new)} instead$"):
                method_config(name, **{old: 1})
            checked.add(old)
    assert checked >= {"beta", "threshold", "anchor", "gamma", "layers", "grad_mode", "gamma_rampup_epochs",
                       "cam_weight", "cam_warmup_epochs", "cam_target", "vat_weight", "vat_eps", "entmin_weight",
                       "rampup_epochs"}


# ---------------------------------------------------------------- methods of one's own (CAMSSL_METHODS)


def test_a_plugin_method_is_found_whatever_camssl_module_is_imported_first(tmp_path):
    """A script whose first camssl import is camssl.config (which imports the methods, which import the
    plugins): a plugin written as the README says loads; one importing from camssl.config is one clear line."""
    import os
    import subprocess
    import sys

    from conftest import PLUGIN_ENV

    script = ("from camssl.config import load_config\n"
              "print(type(load_config('demo', ['method.name=seen_table']).method).__name__)\n")
    env = {**os.environ, **PLUGIN_ENV}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and proc.stdout == "SeenTableConfig\n", proc.stderr[-2000:]

    (tmp_path / "old_style.py").write_text(
        "from dataclasses import dataclass\nfrom camssl.config import MethodConfig\n"
        "@dataclass\nclass OldConfig(MethodConfig):\n    name: str = 'old'\n")
    env = {**env, "CAMSSL_METHODS": "old_style", "PYTHONPATH": f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "CAMSSL_METHODS module 'old_style' imports from a camssl module that imports the plugins" in last
    assert "from camssl.methods import Method, MethodConfig, StepOutput, register" in last
