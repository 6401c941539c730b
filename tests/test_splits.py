"""Labeled / unlabeled / validation splits: stratified, disjoint, exact sizes, seeded, saved."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from camssl.data import Split, SplitConfig, make_split
from camssl.errors import ConfigError, DataError

NUM_CLASSES = 10
CLASS_SIZES = [100 + 10 * c for c in range(NUM_CLASSES)]  # unequal: 100, 110, ..., 190
NAMES = [f"class{c}" for c in range(NUM_CLASSES)]


@pytest.fixture()
def labels() -> torch.Tensor:
    """Shuffled labels with unequal class sizes."""
    ordered = np.repeat(np.arange(NUM_CLASSES), CLASS_SIZES)
    return torch.from_numpy(np.random.default_rng(123).permutation(ordered))


def per_class(labels: torch.Tensor, index: torch.Tensor) -> list[int]:
    return torch.bincount(labels[index], minlength=NUM_CLASSES).tolist()


def test_sizes_exact_disjoint_and_stratified(labels: torch.Tensor) -> None:
    cfg = SplitConfig(val_fraction=0.2, n_labeled=95, ratio=3.0, seed=1)
    split = make_split(labels, NUM_CLASSES, cfg, "fp")

    assert len(split.labeled) == 95
    assert len(split.unlabeled) == 285
    for part in (split.labeled, split.unlabeled, split.val):
        assert part.dtype == torch.int64
        assert torch.equal(part, part.sort().values)
    sets = [set(p.tolist()) for p in (split.labeled, split.unlabeled, split.val)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert all(0 <= i < len(labels) for s in sets for i in s)

    labeled_counts = per_class(labels, split.labeled)
    assert max(labeled_counts) - min(labeled_counts) <= 1
    assert sorted(labeled_counts) == [9] * 5 + [10] * 5
    val_counts = per_class(labels, split.val)
    for count, size in zip(val_counts, CLASS_SIZES, strict=True):
        assert abs(count - 0.2 * size) <= 1
    assert split.counts == {
        "labeled": labeled_counts,
        "unlabeled": per_class(labels, split.unlabeled),
        "val": val_counts,
    }
    assert split.fingerprint == "fp" and split.config == cfg


def test_seed_determines_split(labels: torch.Tensor) -> None:
    cfg = SplitConfig(n_labeled=50, ratio=2.0, seed=7)
    first = make_split(labels, NUM_CLASSES, cfg)
    np.random.seed(999)  # global numpy / torch state must not matter
    torch.manual_seed(999)
    again = make_split(labels.clone(), NUM_CLASSES, SplitConfig(n_labeled=50, ratio=2.0, seed=7))
    other = make_split(labels, NUM_CLASSES, SplitConfig(n_labeled=50, ratio=2.0, seed=8))
    for part in ("labeled", "unlabeled", "val"):
        assert torch.equal(getattr(first, part), getattr(again, part))
        assert not torch.equal(getattr(first, part), getattr(other, part))


def test_ratio_zero_gives_no_unlabeled(labels: torch.Tensor) -> None:
    split = make_split(labels, NUM_CLASSES, SplitConfig(n_labeled=40, ratio=0.0))
    assert split.unlabeled.numel() == 0 and split.unlabeled.dtype == torch.int64
    assert len(split.labeled) == 40


def test_zero_val_fraction_gives_no_val(labels: torch.Tensor) -> None:
    split = make_split(labels, NUM_CLASSES, SplitConfig(val_fraction=0.0, n_labeled=1000, ratio=0.45))
    assert split.val.numel() == 0
    assert per_class(labels, split.labeled) == [100] * NUM_CLASSES


def test_save_load_round_trip(labels: torch.Tensor, tmp_path) -> None:
    split = make_split(labels, NUM_CLASSES, SplitConfig(n_labeled=33, ratio=1.5, seed=3), "abc123")
    path = tmp_path / "run" / "split.json"
    split.save(path)
    loaded = Split.load(path)
    for part in ("labeled", "unlabeled", "val"):
        assert torch.equal(getattr(loaded, part), getattr(split, part))
    assert loaded.config == split.config
    assert loaded.fingerprint == "abc123"
    assert loaded.counts == split.counts
    record = json.loads(path.read_text())
    assert record["counts"]["labeled"] == split.counts["labeled"]
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temp file left


def test_too_many_labeled_names_class_and_maximum(labels: torch.Tensor) -> None:
    # class0 has 100 images, 80 left after validation -> at most 800 labeled.
    with pytest.raises(DataError) as info:
        make_split(labels, NUM_CLASSES, SplitConfig(n_labeled=1000, ratio=0.0), class_names=NAMES)
    message = str(info.value)
    assert "split.n_labeled=1000 needs 100 images per class" in message
    assert "class 'class0' has only 80 left after validation" in message
    assert "use at most 800 labeled" in message
    assert "\n" not in message
    make_split(labels, NUM_CLASSES, SplitConfig(n_labeled=800, ratio=0.0))  # the maximum fits


def test_too_many_unlabeled_gives_maximum_ratio(labels: torch.Tensor) -> None:
    total = sum(CLASS_SIZES)  # 1450; val takes round(0.2 n) per class = 290; labeled 100 -> 1060 left
    left = total - sum(round(0.2 * n) for n in CLASS_SIZES) - 100
    with pytest.raises(DataError) as info:
        make_split(labels, NUM_CLASSES, SplitConfig(n_labeled=100, ratio=20.0))
    message = str(info.value)
    assert f"asks for 2000 unlabeled images but only {left} remain" in message
    max_ratio = float(re.search(r"split.ratio <= ([0-9.]+)", message).group(1))
    assert max_ratio == pytest.approx(left / 100)
    split = make_split(labels, NUM_CLASSES, SplitConfig(n_labeled=100, ratio=max_ratio))
    assert len(split.unlabeled) == round(max_ratio * 100)


@pytest.mark.parametrize(
    "cfg",
    [
        SplitConfig(val_fraction=1.0),
        SplitConfig(val_fraction=-0.1),
        SplitConfig(n_labeled=0),
        SplitConfig(n_labeled=2.5),  # type: ignore[arg-type]
        SplitConfig(ratio=-1.0),
        SplitConfig(ratio=float("nan")),
        SplitConfig(seed=-1),
    ],
)
def test_invalid_config(cfg: SplitConfig) -> None:
    with pytest.raises(ConfigError):
        cfg.validate()


def test_fewer_labeled_than_classes(labels: torch.Tensor) -> None:
    with pytest.raises(ConfigError, match="split.n_labeled >= 10"):
        make_split(labels, NUM_CLASSES, SplitConfig(n_labeled=5))


def test_load_rejects_missing_and_malformed_files(tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        Split.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not a valid camssl split"):
        Split.load(bad)
    bad.write_text(json.dumps({"format": "camssl-split", "version": 1, "config": {}}))
    with pytest.raises(DataError, match="not a valid camssl split"):
        Split.load(bad)
