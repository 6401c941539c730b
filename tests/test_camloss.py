"""CAM-loss and CAAM–CAM distillation (issue 12): maps, gradient routing, the SSL term, the teacher,
the command line and its bad input.

Unit tests first (seconds); then tiny runs on the embedded mini set from the command line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from camssl.augment import AugmentConfig, Augmenter
from camssl.cam import caam, cam, fc_weight, normalize_maps
from camssl.cli import main
from camssl.config import dump_yaml, load_config, method_config
from camssl.distributed import Dist
from camssl.errors import ConfigError, UserError
from camssl.losses import caam_cam_distance, caam_matching, cam_loss, logit_kd
from camssl.methods import METHODS, RunInfo
from camssl.models import build_model
from camssl.models.saved import fingerprint, load_frozen
from conftest import CLASSES, TINY, fails, grads, records, snapshot, tiny_batch, tiny_ctx

LATE = 20.0  # a step this many epochs into training is past every warm-up of L_cam's defaults


def is_zero(g: torch.Tensor | None) -> bool:
    return g is None or not bool(g.abs().sum() > 0)


# ---------------------------------------------------------------- maps


def test_caam_and_cam_equal_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 2, 4, generator=g, dtype=torch.float64)
    w = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([4, 1])
    a, m = caam(feats), cam(feats, w, y)
    for b in range(2):
        for i in range(2):
            for j in range(4):
                assert a[b, i, j] == pytest.approx(sum(float(feats[b, k, i, j]) for k in range(3)), abs=1e-12)
                hand = sum(float(w[y[b], k]) * float(feats[b, k, i, j]) for k in range(3))
                assert m[b, i, j] == pytest.approx(hand, abs=1e-12)
    assert caam(feats.half()).dtype == torch.float32  # at least float32, like cam()


def test_cam_of_the_last_stage_matches_the_classifier():
    """At a camssl model's cam_layer, the pixel mean of CAM_c plus the bias is logit c (GAP + linear)."""
    torch.manual_seed(0)
    model = build_model("resnet18", 10, width=0.125).eval()
    x = torch.randn(3, 3, 32, 32)
    logits, feats = model(x, taps=[model.cam_layer])
    wrapped = nn.DataParallel(model)  # fc_weight looks through wrappers
    assert fc_weight(wrapped) is model.fc.weight
    for c in (0, 7):
        m = cam(feats[model.cam_layer], fc_weight(model), torch.full((3,), c))
        assert torch.allclose(m.mean((1, 2)) + model.fc.bias[c], logits[:, c], atol=1e-5)


# ---------------------------------------------------------------- L_cam and its gradients


def test_detach_mode_passes_no_gradient_through_the_cam_side():
    g = torch.Generator().manual_seed(1)
    feats = torch.rand(4, 6, 3, 3, generator=g, requires_grad=True)
    w = torch.randn(10, 6, generator=g, requires_grad=True)
    y = torch.tensor([0, 3, 5, 9])
    caam_cam_distance(feats, w, y, target="detach").sum().backward()
    got = feats.grad.clone()
    assert w.grad is None  # W never gets a gradient from L_cam
    # by hand: the CAM side computed from constants
    f2 = feats.detach().clone().requires_grad_()
    target = normalize_maps(cam(feats.detach(), w.detach(), y), "minmax")
    (normalize_maps(caam(f2), "minmax") - target).abs().mean((1, 2)).sum().backward()
    assert torch.equal(got, f2.grad)
    # detach-w: the features also get a gradient through CAM_y, W still none
    feats.grad = None
    caam_cam_distance(feats, w, y, target="detach-w").sum().backward()
    assert w.grad is None and not torch.allclose(feats.grad, got)


@pytest.mark.parametrize("target", ["detach", "detach-w"])
def test_with_ce_weight_zero_only_the_backbone_learns(target):
    model, ctx = tiny_ctx(epoch=LATE)
    cfg = method_config("cam_loss", alpha=0.0, cam={"weight": 3.0, "ramp_epochs": 0.0, "target": target})
    out = METHODS["cam_loss"](cfg).step(ctx, tiny_batch())
    assert float(out.metrics["loss_cam"]) > 0 and float(out.metrics["cam_weight"]) == 3.0
    out.loss.backward()
    g = grads(model)
    assert is_zero(g["fc.weight"]) and is_zero(g["fc.bias"])
    assert not is_zero(g["layer4.1.conv2.weight"]) and not is_zero(g["layer1.0.conv1.weight"])


def test_cam_loss_options_warmup_and_mask():
    term = METHODS["cam_loss"](method_config("cam_loss", cam={"weight": 2.0, "ramp_epochs": 4.0})).cam_term
    assert [term.weight_at(e) for e in (0, 3.9, 4, 9)] == [0.0, 0.0, 2.0, 2.0]  # step warm-up (default)
    lin = METHODS["cam_loss"](method_config("cam_loss", cam={"weight": 2.0, "ramp_epochs": 4.0, "ramp": "linear"}))
    assert [lin.cam_term.weight_at(e) for e in (0, 1, 4, 9)] == [0.0, 0.5, 2.0, 2.0]
    feats, w, y = torch.rand(3, 4, 2, 2), torch.randn(5, 4), torch.tensor([0, 1, 2])
    for norm in ("max", "minmax", "l2", "none"):
        assert torch.isfinite(cam_loss(feats, w, y, norm=norm))
    per = caam_cam_distance(feats, w, y)
    assert cam_loss(feats, w, y, mask=torch.tensor([1.0, 0.0, 1.0])) == pytest.approx(float(per[[0, 2]].sum() / 3))
    with pytest.raises(ConfigError, match="method.cam.norm='median' is invalid; allowed values: max, minmax"):
        load_config("demo", {"method.name": "cam_loss", "method.cam.norm": "median"})
    with pytest.raises(ConfigError, match="method.cam.target='none' is invalid; allowed values: detach"):
        load_config("demo", {"method.name": "pseudo_label", "method.cam.target": "none"})


def test_cam_weight_zero_is_exactly_the_supervised_step():
    model, ctx = tiny_ctx(epoch=LATE)
    out = METHODS["cam_loss"](method_config("cam_loss", cam={"weight": 0.0})).step(ctx, tiny_batch())
    out.loss.backward()
    model2, ctx2 = tiny_ctx(epoch=LATE)
    out2 = METHODS["supervised"](method_config("supervised")).step(ctx2, tiny_batch())
    out2.loss.backward()
    assert torch.equal(out.loss, out2.loss)
    assert all(torch.equal(a, b) for a, b in zip(grads(model).values(), grads(model2).values()))


# ---------------------------------------------------------------- the semi-supervised term


class Counter:
    def __init__(self, model: nn.Module) -> None:
        self.n = 0
        model.register_forward_pre_hook(lambda *_: setattr(self, "n", self.n + 1))


@pytest.mark.parametrize("name", ["pseudo_label", "gradcam", "fixmatch"])
def test_ssl_term_uses_the_same_forward_passes(name):
    runs = {}
    for weight in (0.0, 2.0):
        model, ctx = tiny_ctx(epoch=LATE)
        calls = Counter(model)
        cfg = method_config(name, cam={"weight": weight, "ramp_epochs": 0.0, "threshold": 0.0})
        out = METHODS[name](cfg).step(ctx, tiny_batch())
        out.loss.backward()
        runs[weight] = (calls.n, out, grads(model))
    assert runs[0.0][0] == runs[2.0][0] == 2  # anchor + (labeled, strong): no extra forward
    off, on = runs[0.0][1], runs[2.0][1]
    assert "loss_cam" not in off.metrics  # off: nothing added
    assert float(on.metrics["loss_cam"]) > 0 and float(on.metrics["loss_cam_u"]) > 0
    assert float(on.metrics["cam_mask_rate"]) == 1.0  # threshold 0 keeps every unlabeled image
    expected = off.loss.detach() + 2.0 * (on.metrics["loss_cam"] + on.metrics["loss_cam_u"])
    assert float(on.loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    assert torch.equal(runs[0.0][2]["fc.weight"], runs[2.0][2]["fc.weight"])  # L_cam leaves W alone


def test_ssl_term_threshold_and_labeled_only():
    _, ctx = tiny_ctx(epoch=LATE)
    cfg = method_config("pseudo_label", cam={"weight": 1.0, "ramp_epochs": 0.0, "threshold": 0.999})
    out = METHODS["pseudo_label"](cfg).step(ctx, tiny_batch())  # an untrained net is never this sure
    assert float(out.metrics["cam_mask_rate"]) == 0.0 and float(out.metrics["loss_cam_u"]) == 0.0
    _, ctx = tiny_ctx(epoch=LATE)
    cfg = method_config("pseudo_label", cam={"weight": 1.0, "ramp_epochs": 0.0, "unlabeled": False})
    out = METHODS["pseudo_label"](cfg).step(ctx, tiny_batch())
    assert "loss_cam_u" not in out.metrics and float(out.metrics["loss_cam"]) > 0
    with pytest.raises(ConfigError, match=r"method.cam.threshold=1.0 is invalid: must be a number in \[0, 1\)"):
        load_config("demo", {"method.cam.threshold": 1.0})


# ---------------------------------------------------------------- the teacher (unit level)


def fake_run(root: Path, *, model: str = "resnet18", width: float = 0.125, classes: list[str] = CLASSES,
             seed: int = 0) -> Path:
    """A run directory as training leaves it (config.yaml, best.pt), with freshly initialised weights."""
    root.mkdir(parents=True)
    cfg = load_config("demo", {"model.name": model, "model.width": width, "method.name": "supervised"})
    (root / "config.yaml").write_text(dump_yaml(cfg))
    torch.manual_seed(seed)
    net = build_model(model, len(classes), width=width)
    torch.save({"epoch": 1, "classes": classes, "model": net.state_dict()}, root / "best.pt")
    return root


def run_info(num_classes: int = 10) -> RunInfo:
    return RunInfo(num_classes=num_classes, classes=CLASSES[:num_classes], n_train=0, split=None, device=torch.device("cpu"),
                   dist=Dist(), net=None, run_dir=Path("."), labels=torch.zeros(0),
                   load_frozen=lambda p: load_frozen(p, torch.device("cpu")))  # type: ignore[arg-type]


def kd_method(teacher: Path, **fields):
    method = METHODS["cam_kd"](method_config("cam_kd", teacher=str(teacher), **fields))
    method.setup(run_info())
    return method


@pytest.mark.parametrize("caam_w, logit_w", [(0.0, 0.0), (3.0, 0.0), (0.0, 1.0), (3.0, 1.0)])
def test_four_kd_variants_share_one_step(tmp_path, caam_w, logit_w):
    teacher = fake_run(tmp_path / "t", model="wrn28_2", width=0.25)  # another architecture: 8×8 maps vs 4×4
    method = kd_method(teacher, caam_weight=caam_w, logit_weight=logit_w)
    assert all(not p.requires_grad for p in method.teacher.parameters()) and not method.teacher.training
    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    model, ctx = tiny_ctx(epoch=LATE)
    out = method.step(ctx, tiny_batch())
    assert {"loss_s", "loss_caam", "loss_kd", "teacher_acc"} <= set(out.metrics)
    out.loss.backward()
    expected = out.metrics["loss_s"] + caam_w * out.metrics["loss_caam"] + logit_w * out.metrics["loss_kd"]
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    assert all(torch.equal(v, method.teacher.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in method.teacher.parameters())
    if caam_w == logit_w == 0.0:  # the student alone trains exactly like supervised
        model2, ctx2 = tiny_ctx(epoch=LATE)
        out2 = METHODS["supervised"](method_config("supervised")).step(ctx2, tiny_batch())
        out2.loss.backward()
        assert torch.equal(out.loss, out2.loss)
        assert all(torch.equal(a, b) for a, b in zip(grads(model).values(), grads(model2).values()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_teacher_beyond_fp16s_range_gives_finite_losses_under_autocast(tmp_path, dtype):
    """Seen on a GPU (docs/gpu.md): a teacher whose logits pass 65,504 made fp16 logits inf and the KD losses NaN."""
    teacher = fake_run(tmp_path / "t")
    method = kd_method(teacher, caam_weight=3.0, logit_weight=1.0)
    with torch.no_grad():
        fc_weight(method.teacher).mul_(1e5)  # logits far past fp16's largest number
    model, ctx = tiny_ctx(epoch=LATE)
    with torch.autocast("cpu", dtype=dtype):
        out = method.step(ctx, tiny_batch())
    assert torch.isfinite(out.metrics["loss_caam"]) and torch.isfinite(out.metrics["loss_kd"])


def test_caam_matching_resizes_and_logit_kd_is_zero_for_equal_logits():
    feats = torch.rand(2, 4, 4, 4, requires_grad=True)
    teacher_maps = torch.rand(2, 8, 8)
    d = caam_matching(feats, teacher_maps)
    assert d.shape == (2,) and bool((d > 0).all())
    d.sum().backward()
    assert feats.grad.abs().sum() > 0
    z = torch.randn(3, 10)
    assert float(logit_kd(z, z, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(logit_kd(z, -z, 4.0)) > 0


def test_teacher_state_and_a_changed_teacher_is_refused(tmp_path):
    teacher = fake_run(tmp_path / "t")
    method = kd_method(teacher)
    state = method.state_dict()
    assert state == {"teacher": str(teacher.resolve()), "teacher_fingerprint": fingerprint(method.teacher)}
    kd_method(teacher).load_state_dict(state)  # the same teacher resumes
    assert kd_method(teacher / "best.pt").teacher_fingerprint == state["teacher_fingerprint"]  # a checkpoint file
    other = fake_run(tmp_path / "other", seed=1)
    shutil.copy(other / "best.pt", teacher / "best.pt")  # the teacher's weights changed under the run
    with pytest.raises(UserError, match="same teacher"):
        kd_method(teacher).load_state_dict(state)


def test_bad_teachers_at_setup(tmp_path):
    with pytest.raises(UserError, match=r"method\.teacher: .*does not exist"):
        kd_method(tmp_path / "missing")
    (tmp_path / "notarun").mkdir()
    with pytest.raises(UserError, match=r"method\.teacher: .*not a camssl run"):
        kd_method(tmp_path / "notarun")
    two = fake_run(tmp_path / "two", classes=["apple", "pear"])
    with pytest.raises(UserError, match="has 2 classes, this run's data has 10"):
        kd_method(two)
    with pytest.raises(ConfigError, match="needs a teacher"):
        load_config("demo", {"method.name": "cam_kd"})


def test_shipped_sweep_specs_pair_each_student_with_its_seeds_teacher():
    from camssl.experiments import plan_sweep

    teachers = plan_sweep("camloss-teachers-cpu")
    assert [r.id for r in teachers.runs] == [f"baseline/teacher/s{s}" for s in range(3)]
    plan = plan_sweep("camloss-cpu")
    assert plan.seeds == teachers.seeds and len(plan.runs) == 30
    for r in plan.runs:
        if r.config.method.name == "cam_kd":
            assert r.config.method.teacher == f"sweeps/camloss-teachers/baseline/teacher/s{r.seed}/last.pt"
            assert r.config.split.seed == r.seed and r.config.split.n_labeled == teachers.runs[0].config.split.n_labeled
    roles = {r.setting: r.role for r in plan.runs}
    assert roles["pseudo_label"] == "ablation" and roles["pseudo_label+cam"] == "other"  # not the paper's ablation
    warm = {r.setting: r.config.method.cam.ramp_epochs for r in plan.runs if r.config.method.name == "cam_loss"}
    assert warm == {"cam_loss": 3.0, "cam_loss-nowarmup": 0.0, "cam_loss-lambda1": 3.0, "cam_loss-detach-w": 3.0}


# ---------------------------------------------------------------- diagnostics


def test_caam_diagnostics_on_known_cases():
    from camssl.viz import caam_diagnostics

    torch.manual_seed(0)
    model = build_model("resnet18", 10, width=0.125)
    aug = Augmenter(AugmentConfig())
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    d = caam_diagnostics(model, x, aug)
    assert -1 <= d["caam_cam_agreement"] <= 1 and 0 <= d["caam_outside_share"] <= 1
    assert model.training  # restored
    with torch.no_grad():  # every class weight equal: CAM = CAAM, perfect agreement
        model.fc.weight.fill_(0.5)
    d = caam_diagnostics(model, x, aug)
    assert d["caam_cam_agreement"] == pytest.approx(1.0, abs=1e-5)
    assert d["caam_outside_share"] < 0.75  # the top CAM pixels are the top CAAM pixels


# ---------------------------------------------------------------- the command line, on the embedded mini set


@pytest.fixture
def teacher_run(supervised_run) -> Path:
    """A trained run to distil from: the session's tiny supervised run (never changed by these tests)."""
    return supervised_run


def test_cam_loss_from_the_command_line_and_its_caam_grid(tmp_path):
    from PIL import Image

    run = tmp_path / "cam_loss"
    assert main(["train", "--method", "cam_loss", "--out", str(run), *TINY, "method.cam.ramp_epochs=0"]) == 0
    rec = records(run)[0]
    assert {"loss_s", "loss_cam", "cam_weight", "caam_cam_agreement", "caam_outside_share"} <= set(rec)
    assert rec["cam_weight"] == 1.0 and rec["loss_cam"] > 0  # the default λ
    assert json.loads((run / "result.json").read_text())["method"] == "cam_loss"
    out = tmp_path / "caam.png"
    assert main(["cam", str(run), "--maps", "caam", "--n", "3", "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[1] > 200


VARIANTS = {
    "student": ["method.caam_weight=0", "method.logit_weight=0"],
    "logit_kd": ["method.caam_weight=0", "method.logit_weight=1"],
    "caam_cam": [],  # the method's default: CAAM–CAM matching only
    "both": ["method.logit_weight=1"],
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_four_kd_variants_from_the_command_line(teacher_run, tmp_path, variant):
    teacher_files = snapshot(teacher_run)
    run = tmp_path / variant
    assert main(["train", "--method", "cam_kd", "--teacher", str(teacher_run), "--out", str(run), *TINY,
                 *VARIANTS[variant]]) == 0
    rec = records(run)[0]
    assert {"loss_s", "loss_caam", "loss_kd", "teacher_acc", "caam_cam_agreement"} <= set(rec)
    state = torch.load(run / "last.pt", weights_only=True)
    teacher = load_frozen(teacher_run, torch.device("cpu"))
    assert state["method"] == {"teacher": str(teacher_run.resolve()), "teacher_fingerprint": fingerprint(teacher)}
    student_keys = set(build_model("resnet18", 10, width=0.125).state_dict())
    assert set(state["model"]) == student_keys  # the teacher is not in the checkpoint
    assert snapshot(teacher_run) == teacher_files


def test_the_teacher_never_trains(teacher_run, tmp_path):
    from camssl.train import Trainer

    cfg = load_config("demo", ["method.name=cam_kd", f"method.teacher={teacher_run}", "method.logit_weight=1",
                               "model.width=0.125", "split.n_labeled=100", "split.ratio=0", "optim.epochs=1",
                               "optim.batch_size=50", "cam_grid=false"])
    trainer = Trainer(cfg, tmp_path / "run", log=lambda _: None)
    teacher = trainer.method.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not trained & {id(p) for p in teacher.parameters()}
    trainer.fit()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())  # BatchNorm buffers too
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())


def test_resume_with_another_teacher_is_refused(teacher_run, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_run, teacher)
    run = tmp_path / "kd"
    assert main(["train", "--method", "cam_kd", "--teacher", str(teacher), "--out", str(run), *TINY]) == 0
    (run / "result.json").unlink()
    assert main(["train", "--resume", str(run)]) == 0  # the same teacher resumes (nothing left to train)
    (run / "result.json").unlink()
    state = torch.load(teacher / "best.pt", weights_only=True)
    state["model"]["fc.bias"] += 0.01  # the teacher's weights changed under the run
    torch.save(state, teacher / "best.pt")
    files = snapshot(run)
    fails(["train", "--resume", str(run)], capsys, "resume with the same teacher", str(teacher.resolve()))
    assert snapshot(run) == files
    other = fake_run(tmp_path / "other", width=0.25)  # another path in config.yaml: a different config
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(str(teacher), str(other)))
    fails(["train", "--resume", str(run)], capsys, "different config", "method.teacher")


def test_bad_teacher_input_from_the_command_line(teacher_run, tmp_path, capsys):
    out = tmp_path / "out"
    kd = ["train", "--method", "cam_kd", "--out", str(out), *TINY]
    fails([*kd, "--teacher", str(tmp_path / "missing")], capsys, "method.teacher", "does not exist")
    (tmp_path / "notarun").mkdir()
    (tmp_path / "notarun" / "weights.pt").write_bytes(b"not a checkpoint")
    fails([*kd, "--teacher", str(tmp_path / "notarun")], capsys, "method.teacher", "not a camssl run directory")
    err = fails([*kd, "--teacher", str(tmp_path / "notarun" / "weights.pt")], capsys, "method.teacher",
                "cannot read checkpoint", "not a camssl checkpoint")
    assert "restart the run" not in err  # the advice of a resume is no advice about a teacher
    two = fake_run(tmp_path / "two", classes=["apple", "pear"])
    fails([*kd, "--teacher", str(two)], capsys, "has 2 classes", "this run's data has 10")
    fails(kd, capsys, "needs a teacher", "--teacher RUN_DIR")
    sup = ["train", "--out", str(out), *TINY, "--teacher", str(teacher_run)]
    fails([*sup, "--method", "supervised"], capsys, "--teacher is used only by cam_kd", "method supervised")
    fails(sup, capsys, "--teacher is used only by cam_kd", "method gradcam")  # the demo preset's method
    assert not out.exists()  # nothing was written
