"""The method contract, checked for every registered method (built-in and a plugin loaded through CAMSSL_METHODS).

For each method: a tiny step gives a finite loss; gradients reach the model; the method's
state round-trips through ``state_dict``; ``uses_unlabeled`` is honoured (a method that
declares it is given unlabeled images and its loss depends on them; one that does not gets
none); a 2-epoch run logs every metric the method declares for its epoch line; and a run
stopped after epoch 1 and resumed ends exactly where the uninterrupted run ends (metrics
and weights). A new method registers itself and is then checked here without an edit.

Also: a new method combined from the shared parts — a pseudo-label base with hard labels
and L_G — takes at most 40 lines and copies no step code.
"""

from __future__ import annotations

import copy
import dataclasses
import textwrap

import pytest
import torch

from camssl.config import load_config
from camssl.data import DataBundle, load_data
from camssl.data.images import ImageSet
from camssl.methods import METHODS, Batch, StepContext, import_plugins
from camssl.train import Trainer

import_plugins("camssl_test_methods")  # a user's module named in CAMSSL_METHODS (tests/camssl_test_methods.py)
PLUGINS = ("index_log", "seen_table")
VOLATILE = {"epoch_time_s", "images_per_s", "wall_s"}


@pytest.fixture(scope="module")
def mini():
    """700 training and 100 test images of the embedded mini set (enough for every method's tiny run)."""
    full = load_data(load_config("demo").data)
    keep = torch.randperm(len(full.train), generator=torch.Generator().manual_seed(0))[:700]
    train = ImageSet(full.train.images[keep].contiguous(), full.train.labels[keep], full.train.classes)
    test = ImageSet(full.test.images[:100].contiguous(), full.test.labels[:100], full.test.classes)
    return DataBundle(train, test, "mini-700", False, [], "mini-700")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, mini):
    """A trained run to distil from (any method whose config has a ``teacher``)."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    Trainer(_cfg("supervised", epochs=1), run, data=mini, log=lambda _: None).fit()
    return str(run)


def _cfg(name: str, epochs: int = 2, **extra):
    over = {"method.name": name, "model.width": 0.125, "split.n_labeled": 100, "split.ratio": 1.0,
            "split.val_fraction": 0.1,
            "optim.batch_size": 16, "optim.steps_per_epoch": 2, "optim.epochs": epochs, "cam_grid": False,
            "eval_batch_size": 500, "device": "cpu", **extra}
    return load_config("demo", over)


def _method_cfg(name: str, teacher: str):
    fields = {f.name for f in dataclasses.fields(METHODS[name].Config)}
    return _cfg(name, **({"method.teacher": teacher} if "teacher" in fields else {}))


def _trainer(cfg, run_dir, mini, resume: bool = False) -> Trainer:
    torch.manual_seed(cfg.seed)  # what camssl.train.process_settings does for a run from the command line
    return Trainer(cfg, run_dir, data=mini, resume=resume, log=lambda _: None)


def _records(history):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in history]


@pytest.fixture(params=sorted(METHODS), scope="module")
def name(request):
    return request.param


def test_plugins_are_registered_through_camssl_methods():
    assert set(PLUGINS) <= set(METHODS)


class _Watched(Batch):
    """A batch that records which of its unlabeled fields a step reads."""

    def __getattribute__(self, key: str):
        if key in ("x_u", "y_u", "idx_u"):
            object.__getattribute__(self, "read").add(key)
        return object.__getattribute__(self, key)


def test_a_step_is_finite_reaches_the_model_and_honours_uses_unlabeled(name, mini, teacher, tmp_path):
    t = _trainer(_method_cfg(name, teacher), tmp_path / "run", mini)
    batch = t.next_batch()
    cls = METHODS[name]
    assert (batch.x_u is not None) == cls.uses_unlabeled  # the trainer draws unlabeled images only when declared
    watched = _Watched(**{f.name: getattr(batch, f.name) for f in dataclasses.fields(Batch)})
    watched.read = set()

    def loss_of(b: Batch, backward: bool = False) -> torch.Tensor:
        net = copy.deepcopy(t.net).train()
        method = cls(t.cfg.method, label_smoothing=t.cfg.optim.label_smoothing)
        method.setup(t._run_info())
        ctx = StepContext(net, t.augmenter, torch.Generator().manual_seed(5), epoch=12.0)
        out = method.step(ctx, b)
        assert torch.isfinite(out.loss), f"{name}: loss {out.loss}"
        assert all(torch.isfinite(v).all() for v in out.metrics.values()), out.metrics
        if backward:
            out.loss.backward()
            grads = [p.grad for p in net.parameters() if p.requires_grad]
            reached = sum(g is not None and bool(g.abs().sum() > 0) for g in grads)
            assert reached >= 0.5 * len(grads), f"{name}: gradients reach {reached} of {len(grads)} parameters"
            assert all(g is None or torch.isfinite(g).all() for g in grads)
        return out.loss.detach()

    loss_of(watched, backward=True)
    if cls.uses_unlabeled:
        assert watched.read & {"x_u", "idx_u"}, f"{name} declares uses_unlabeled but never reads the unlabeled batch"


def test_state_dict_round_trips(name, mini, teacher, tmp_path):
    t = _trainer(_method_cfg(name, teacher), tmp_path / "run", mini)
    for _ in range(2):  # some state (tables, logs) is written by steps and epochs
        t.stepper(t.next_batch(), step=t.state.step)
        t.state.step += 1
    t.method.end_epoch()
    state = t.method.state_dict()
    fresh = METHODS[name](t.cfg.method)
    fresh.setup(t._run_info())
    fresh.load_state_dict(copy.deepcopy(state))
    again = fresh.state_dict()
    assert _equal(state, again), f"{name}: state_dict does not round-trip"


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_logs_its_metrics_and_resumes_exactly(name, mini, teacher, tmp_path):
    _check_metrics_and_resume(_method_cfg(name, teacher), name, mini, tmp_path)


def test_flexmatch_thresholds_log_and_resume_exactly(mini, tmp_path):
    """method.pseudo.flex keeps a per-image table: it must reach the epoch record and survive a resume."""
    cfg = _cfg("fixmatch", **{"method.pseudo.flex": True, "method.pseudo.threshold": 0.2})
    straight, after_epoch_1 = _check_metrics_and_resume(cfg, "fixmatch+flex", mini, tmp_path)
    assert (after_epoch_1["flex"]["stamp"] >= 0).any()  # images passed τ in epoch 1: the resume needs the table
    record = straight.state.history[-1]
    assert record["flex_threshold_min"] < record["flex_threshold_mean"]  # the classes' thresholds differ


def _check_metrics_and_resume(cfg, name, mini, tmp_path):
    straight = _trainer(cfg, tmp_path / "straight", mini)
    straight.fit()
    record = straight.state.history[-1]
    missing = [k for k in straight.method.log_metrics if k not in record]
    assert not missing, f"{name} declares log_metrics it never reports: {missing}"

    stopped = _trainer(cfg, tmp_path / "stopped", mini)
    stopped._start()
    stopped._finish_epoch(stopped.train_epoch())  # epoch 1 and its checkpoint, then the process "dies"
    after_epoch_1 = copy.deepcopy(stopped.method.state_dict())
    del stopped
    resumed = _trainer(cfg, tmp_path / "stopped", mini, resume=True)
    assert resumed.state.epoch == 1
    resumed.fit()
    assert _records(resumed.state.history) == _records(straight.state.history)
    for (k, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(a, b), f"{name}: {k} differs after the resume"
    return straight, after_epoch_1


# ---------------------------------------------------------------- a new method in at most 40 lines

COMPOSED = '''
from dataclasses import dataclass, field

from camssl.methods.base import MethodConfig, register
from camssl.methods.gradcam_term import GradCAMSettings, GradCAMTerm
from camssl.methods.parts import PseudoSettings
from camssl.methods.ssl import SemiSupervised


@dataclass
class HardGradCAMConfig(MethodConfig):
    name: str = "hard_gradcam"
    pseudo: PseudoSettings = field(default_factory=lambda: PseudoSettings(threshold=0.5, target="hard"))
    gradcam: GradCAMSettings = field(default_factory=lambda: GradCAMSettings(layers=["layer2"]))


@register
class HardGradCAM(SemiSupervised):
    """Hard pseudo-labels of the original view above 0.5, and L_G at layer2."""

    name = "hard_gradcam"
    Config = HardGradCAMConfig
    summary = "hard pseudo-labels + L_G (a test of composition)"
    terms = (GradCAMTerm,)
'''


def test_a_composed_method_is_under_40_lines_and_trains_like_its_configuration(mini, tmp_path, monkeypatch):
    source = textwrap.dedent(COMPOSED).strip() + "\n"
    assert len(source.splitlines()) <= 40
    assert "def step" not in source
    (tmp_path / "hard_gradcam_method.py").write_text(source)  # the user's own module, loaded like CAMSSL_METHODS
    monkeypatch.syspath_prepend(str(tmp_path))
    if "hard_gradcam" not in METHODS:
        import_plugins("hard_gradcam_method")
    assert "hard_gradcam" in METHODS
    a = _cfg("hard_gradcam", epochs=1, **{"method.gradcam.layers": ["layer2"]})  # the demo preset says layer3
    b = _cfg("gradcam", epochs=1, **{"method.pseudo.threshold": 0.5, "method.pseudo.target": "hard",
                                      "method.gradcam.layers": ["layer2"]})
    ra = _trainer(a, tmp_path / "a", mini).fit()
    rb = _trainer(b, tmp_path / "b", mini).fit()
    assert ra["test_acc"] == rb["test_acc"] and ra["test_loss"] == rb["test_loss"]
