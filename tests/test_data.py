"""Data sources: CIFAR python format, image folders, the embedded mini set, caching, download."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camssl.data import DataConfig, download_cifar10, load_data
from camssl.data import cache as cache_module
from camssl.data import images as images_module
from camssl.errors import ConfigError, DataError

CIFAR_CLASSES = ["plane", "car", "bird"]
PER_BATCH = 6  # 2 images per class in each of the 6 batches


# ---------------------------------------------------------------- helpers


def write_cifar(folder: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write a tiny CIFAR-10 in the official format; return {file: (data N×3072, labels)}."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
        labels = [i % len(CIFAR_CLASSES) for i in range(PER_BATCH)]
        batches[name] = (data, labels)
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_vis": 3072}, f, protocol=2)
    return batches


def make_tar_gz(src_dir: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src_dir, arcname=src_dir.name)
    return archive


def save_image(path: Path, img: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def solid_folder(root: Path, classes: dict[str, int], colors: dict[str, tuple[int, int, int]] | None = None) -> Path:
    """``root/<class>/NN.png`` solid 32×32 images; pixel value encodes class and index."""
    for label, (name, count) in enumerate(classes.items()):
        for i in range(count):
            color = (colors or {}).get(name, (label * 100, i, 7))
            save_image(root / name / f"{i:02d}.png", Image.new("RGB", (32, 32), color))
    return root


def cache_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.camssl-cache.pt"))  # pathlib's glob includes hidden files


@pytest.fixture(autouse=True)
def isolated_cache_dir(tmp_path, monkeypatch) -> Path:
    """Fallback caches go under tmp_path, never into the real ~/.cache."""
    path = tmp_path / "fallback-cache"
    monkeypatch.setenv("CAMSSL_CACHE", str(path))
    return path


# ---------------------------------------------------------------- CIFAR python format


@pytest.fixture()
def cifar_root(tmp_path) -> tuple[Path, dict[str, tuple[np.ndarray, list[int]]]]:
    root = tmp_path / "cifar"
    return root, write_cifar(root / "cifar-10-batches-py")


def check_cifar(bundle, batches) -> None:
    train_data = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert bundle.name == "cifar10" and not bundle.test_carved
    assert bundle.train.classes == CIFAR_CLASSES and bundle.test.classes == CIFAR_CLASSES
    assert bundle.train.images.shape == (5 * PER_BATCH, 3, 32, 32)
    assert bundle.train.images.dtype == torch.uint8 and bundle.train.images.is_contiguous()
    assert bundle.train.labels.dtype == torch.int64
    assert torch.equal(bundle.train.images, torch.from_numpy(train_data.reshape(-1, 3, 32, 32)))
    assert bundle.train.labels.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert torch.equal(bundle.test.images, torch.from_numpy(batches["test_batch"][0].reshape(-1, 3, 32, 32)))
    assert bundle.test.labels.tolist() == batches["test_batch"][1]
    assert len(bundle.train) == 30 and len(bundle.test) == 6


def test_cifar_batch_folder_and_its_parent(cifar_root) -> None:
    root, batches = cifar_root
    check_cifar(load_data(DataConfig(source=str(root / "cifar-10-batches-py"))), batches)
    check_cifar(load_data(DataConfig(source=str(root))), batches)


def test_cifar_archive_read_without_unpacking(cifar_root, tmp_path) -> None:
    root, batches = cifar_root
    archive = make_tar_gz(root / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    bundle = load_data(DataConfig(source=str(archive)))
    check_cifar(bundle, batches)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("cifar-10-batches")] == []
    assert len(cache_files(tmp_path)) == 1  # the cache sits beside the archive


def test_cifar_resized(cifar_root) -> None:
    root, _ = cifar_root
    bundle = load_data(DataConfig(source=str(root), image_size=16))
    assert bundle.train.images.shape == (30, 3, 16, 16) and bundle.test.images.shape == (6, 3, 16, 16)


def test_cifar_missing_batch_is_named(cifar_root) -> None:
    root, _ = cifar_root
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing data_batch_3;"):
        load_data(DataConfig(source=str(root)))


def test_archive_without_cifar_batches(tmp_path) -> None:
    folder = solid_folder(tmp_path / "imgs", {"a": 1, "b": 1})
    archive = make_tar_gz(folder, tmp_path / "imgs.tar.gz")
    with pytest.raises(DataError, match="missing cifar-10-batches-py/data_batch_1"):
        load_data(DataConfig(source=str(archive)))


def test_foreign_pickle_is_refused(cifar_root) -> None:
    root, _ = cifar_root
    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Path("/")}, f)  # any object beyond numpy arrays is refused
    with pytest.raises(DataError, match="test_batch is not a readable CIFAR-10 python batch"):
        load_data(DataConfig(source=str(root)))


# ---------------------------------------------------------------- image folders


@pytest.fixture()
def odd_folder(tmp_path) -> Path:
    """Two classes of images in odd formats, plus files that are not images."""
    root = tmp_path / "pets"
    save_image(root / "cat" / "gray.png", Image.new("L", (32, 32), 100))
    save_image(root / "cat" / "rgba.PNG", Image.new("RGBA", (32, 32), (10, 20, 30, 0)))
    palette = Image.new("P", (40, 40), 1)
    palette.putpalette([0, 0, 0, 200, 50, 25] + [0] * 762)
    save_image(root / "cat" / "sub" / "palette.png", palette)
    save_image(root / "dog" / "wide.jpg", Image.new("RGB", (50, 70), (250, 250, 250)))
    save_image(root / "dog" / "deep.png", Image.fromarray(np.full((32, 32), 257 * 77, dtype=np.uint16)))
    save_image(root / "dog" / "plain.bmp", Image.new("RGB", (32, 32), (1, 2, 3)))
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / ".DS_Store").write_bytes(b"\0\1\2")
    (root / "README.md").write_text("ignored too")
    return root


def test_image_folder_odd_formats(odd_folder) -> None:
    bundle = load_data(DataConfig(source=str(odd_folder), test_fraction=0.4))
    assert bundle.name == "pets" and bundle.test_carved and bundle.skipped == []
    assert bundle.train.classes == ["cat", "dog"] and bundle.test.classes == ["cat", "dog"]
    images = torch.cat([bundle.train.images, bundle.test.images])
    labels = torch.cat([bundle.train.labels, bundle.test.labels])
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.uint8
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    colors = {tuple(img[:, 16, 16].tolist()) for img in images}
    assert {(100, 100, 100), (10, 20, 30), (200, 50, 25), (77, 77, 77), (1, 2, 3)} <= colors
    assert any(min(c) >= 245 for c in colors)  # the resized JPEG (lossy, so roughly 250)
    spread = images.int().amax(dim=(2, 3)) - images.int().amin(dim=(2, 3))
    assert int(spread.max()) <= 6  # solid inputs stay solid (no smearing or channel mix-ups)


def test_corrupt_image_is_named_or_skipped(tmp_path) -> None:
    root = solid_folder(tmp_path / "data", {"a": 3, "b": 3})
    bad = root / "b" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not really a jpeg")
    with pytest.raises(DataError) as info:
        load_data(DataConfig(source=str(root)))
    message = str(info.value)
    assert str(bad) in message and "--skip-bad" in message and "data.skip_bad=true" in message
    assert "\n" not in message

    bundle = load_data(DataConfig(source=str(root), skip_bad=True))
    assert bundle.skipped == [str(bad)]
    assert len(bundle.train) + len(bundle.test) == 6
    # The cache made with skip_bad=true must not hide the bad file from a strict load.
    with pytest.raises(DataError, match="broken.jpg"):
        load_data(DataConfig(source=str(root)))


def test_folder_errors(tmp_path) -> None:
    with pytest.raises(DataError, match=r"data path '/no/such/dir' does not exist; pass --data"):
        load_data(DataConfig(source="/no/such/dir"))

    empty_class = solid_folder(tmp_path / "e", {"a": 2, "b": 2})
    (empty_class / "zebra").mkdir()
    (empty_class / "zebra" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"class folder '.*zebra' has no images"):
        load_data(DataConfig(source=str(empty_class)))

    no_classes = tmp_path / "flat"
    save_image(no_classes / "x.png", Image.new("RGB", (8, 8)))
    with pytest.raises(DataError, match="no class folders"):
        load_data(DataConfig(source=str(no_classes)))

    one_class = solid_folder(tmp_path / "one", {"only": 3})
    with pytest.raises(DataError, match="at least 2 class"):
        load_data(DataConfig(source=str(one_class)))

    text_file = tmp_path / "list.txt"
    text_file.write_text("x")
    with pytest.raises(DataError, match="not a .tar.gz archive"):
        load_data(DataConfig(source=str(text_file)))


def test_carving_is_stratified_and_seeded(tmp_path) -> None:
    root = solid_folder(tmp_path / "c", {"a": 10, "b": 10, "c": 10})
    cfg = DataConfig(source=str(root), test_fraction=0.3)
    first, again, other = load_data(cfg, seed=1), load_data(cfg, seed=1), load_data(cfg, seed=2)
    assert first.test_carved
    assert torch.bincount(first.test.labels).tolist() == [3, 3, 3]
    assert torch.bincount(first.train.labels).tolist() == [7, 7, 7]
    assert torch.equal(first.test.images, again.test.images) and first.fingerprint == again.fingerprint
    assert not torch.equal(first.test.images, other.test.images)
    # Train and test are disjoint and together are the whole folder (pixel (1,·) encodes the index).
    keys = lambda s: {(int(l), int(img[1, 0, 0])) for img, l in zip(s.images, s.labels)}  # noqa: E731
    assert not keys(first.train) & keys(first.test)
    assert len(keys(first.train) | keys(first.test)) == 30


def test_train_test_layout_and_val_fallback(tmp_path) -> None:
    root = tmp_path / "split"
    solid_folder(root / "train", {"a": 4, "b": 4})
    solid_folder(root / "val", {"a": 2, "b": 2})
    bundle = load_data(DataConfig(source=str(root)))
    assert bundle.name == "split" and not bundle.test_carved
    assert len(bundle.train) == 8 and len(bundle.test) == 4
    assert bundle.test.labels.tolist() == [0, 0, 1, 1]

    solid_folder(root / "test", {"a": 1, "c": 1})  # test/ wins over val/, and must match train
    with pytest.raises(DataError, match=r"missing: \['b'\], extra: \['c'\]"):
        load_data(DataConfig(source=str(root)))


def test_separate_test_source(tmp_path) -> None:
    train = solid_folder(tmp_path / "tr", {"a": 3, "b": 3})
    test = solid_folder(tmp_path / "te", {"a": 2, "b": 1})
    bundle = load_data(DataConfig(source=str(train), test_source=str(test)))
    assert not bundle.test_carved
    assert len(bundle.train) == 6 and bundle.test.labels.tolist() == [0, 0, 1]

    wrong = solid_folder(tmp_path / "wrong", {"a": 1, "z": 1})
    with pytest.raises(DataError, match=r"extra: \['z'\]"):
        load_data(DataConfig(source=str(train), test_source=str(wrong)))
    with pytest.raises(DataError, match="test data path"):
        load_data(DataConfig(source=str(train), test_source=str(tmp_path / "absent")))


# ---------------------------------------------------------------- decode-once cache


def fail_decode(*args, **kwargs):
    raise AssertionError("decoded although a valid cache exists")


def test_second_load_uses_cache(tmp_path, monkeypatch) -> None:
    root = solid_folder(tmp_path / "d", {"a": 3, "b": 3})
    first = load_data(DataConfig(source=str(root)))
    assert len(cache_files(root)) == 1
    monkeypatch.setattr(images_module, "decode_image", fail_decode)
    second = load_data(DataConfig(source=str(root)))
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.labels, second.test.labels)
    assert first.fingerprint == second.fingerprint

    # Changing a file changes the key: the folder is decoded again (and fails here).
    save_image(root / "a" / "00.png", Image.new("RGB", (32, 32), (9, 9, 9)))
    with pytest.raises(AssertionError, match="decoded although"):
        load_data(DataConfig(source=str(root)))


def test_corrupt_cache_is_rebuilt(tmp_path) -> None:
    root = solid_folder(tmp_path / "d", {"a": 2, "b": 2})
    first = load_data(DataConfig(source=str(root)))
    (cache,) = cache_files(root)
    cache.write_bytes(b"garbage, not a torch file")
    again = load_data(DataConfig(source=str(root)))
    assert torch.equal(first.train.images, again.train.images)
    assert cache_files(root) == [cache] and cache.stat().st_size > 100  # rewritten


def test_cache_falls_back_to_cache_dir(tmp_path, monkeypatch) -> None:
    root = solid_folder(tmp_path / "ro", {"a": 2, "b": 2})
    monkeypatch.setattr(cache_module, "_writable", lambda folder: folder != root)
    cache_dir = tmp_path / "my-cache"
    load_data(DataConfig(source=str(root), cache_dir=str(cache_dir)))
    assert cache_files(root) == [] and len(cache_files(cache_dir)) == 1
    monkeypatch.setattr(images_module, "decode_image", fail_decode)
    load_data(DataConfig(source=str(root), cache_dir=str(cache_dir)))


def test_new_cache_replaces_old_one(tmp_path) -> None:
    root = solid_folder(tmp_path / "d", {"a": 2, "b": 2})
    load_data(DataConfig(source=str(root)))
    (old,) = cache_files(root)
    save_image(root / "b" / "new.png", Image.new("RGB", (32, 32)))
    load_data(DataConfig(source=str(root)))
    (new,) = cache_files(root)
    assert new != old
    load_data(DataConfig(source=str(root), image_size=16))  # other sizes keep their own cache
    assert len(cache_files(root)) == 2


# ---------------------------------------------------------------- embedded mini set


def test_mini_set() -> None:
    asset = Path(images_module.__file__).parent.parent / "assets" / "mini_cifar10.npz"
    assert asset.stat().st_size <= 2_900_000
    bundle = load_data(DataConfig(source="mini"))
    assert bundle.name == "mini-cifar10" and not bundle.test_carved
    assert len(bundle.train.classes) == 10 and bundle.train.classes == bundle.test.classes
    assert "cat" in bundle.train.classes
    per_class = len(bundle.train) // 10
    assert per_class in (250, 200) and len(bundle.test) == 500
    assert torch.bincount(bundle.train.labels).tolist() == [per_class] * 10
    assert torch.bincount(bundle.test.labels).tolist() == [50] * 10
    assert bundle.train.images.shape == (10 * per_class, 3, 32, 32)
    assert bundle.train.images.dtype == torch.uint8 and bundle.train.images.is_contiguous()
    assert bundle.train.images.float().std() > 30  # real pictures, not blanks


def test_mini_set_is_decoded_once_then_read_from_the_cache_dir(isolated_cache_dir, tmp_path, monkeypatch) -> None:
    first = load_data(DataConfig(source="mini"))
    cached = cache_files(isolated_cache_dir)
    assert len(cached) == 1  # in the cache directory, never inside the installed package
    assert not cache_files(Path(images_module.__file__).parent.parent / "assets")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although a cache exists")

    monkeypatch.setattr(images_module, "decode_image", no_decoding)
    again = load_data(DataConfig(source="mini"))
    assert torch.equal(again.train.images, first.train.images) and torch.equal(again.test.labels, first.test.labels)
    assert again.train.classes == first.train.classes
    cached[0].write_bytes(b"truncated")  # an unreadable cache is rebuilt, not trusted
    monkeypatch.undo()
    monkeypatch.setenv("CAMSSL_CACHE", str(isolated_cache_dir))
    rebuilt = load_data(DataConfig(source="mini"))
    assert torch.equal(rebuilt.train.images, first.train.images) and cached[0].stat().st_size > 1000
    elsewhere = tmp_path / "configured"  # data.cache_dir wins over $CAMSSL_CACHE
    assert torch.equal(load_data(DataConfig(source="mini", cache_dir=str(elsewhere))).train.images, first.train.images)
    assert len(cache_files(elsewhere)) == 1


# ---------------------------------------------------------------- config and download


@pytest.mark.parametrize(
    "cfg",
    [
        DataConfig(image_size=4),
        DataConfig(image_size=32.0),  # type: ignore[arg-type]
        DataConfig(test_fraction=0.0),
        DataConfig(test_fraction=1.0),
        DataConfig(source=""),
        DataConfig(skip_bad="yes"),  # type: ignore[arg-type]
    ],
)
def test_invalid_data_config(cfg: DataConfig) -> None:
    with pytest.raises(ConfigError):
        load_data(cfg)


def test_download_checks_md5(tmp_path, cifar_root) -> None:
    root, _ = cifar_root
    archive = make_tar_gz(root / "cifar-10-batches-py", tmp_path / "upstream.tar.gz")
    url, md5 = archive.as_uri(), hashlib.md5(archive.read_bytes()).hexdigest()
    dest = tmp_path / "downloads"

    with pytest.raises(DataError, match="has MD5"):
        download_cifar10(dest, url=url, md5="0" * 32)
    assert list(dest.iterdir()) == []  # no partial or temp file left

    path = download_cifar10(dest, url=url, md5=md5)
    assert path == dest / "cifar-10-python.tar.gz" and path.read_bytes() == archive.read_bytes()
    assert [p.name for p in dest.iterdir()] == ["cifar-10-python.tar.gz"]
    # Present with the right MD5: nothing is fetched (this URL would fail).
    assert download_cifar10(dest, url=(tmp_path / "gone.tar.gz").as_uri(), md5=md5) == path
    # A failed re-download keeps the good file.
    with pytest.raises(DataError, match="could not download"):
        download_cifar10(dest, url=(tmp_path / "gone.tar.gz").as_uri(), md5="1" * 32)
    assert path.read_bytes() == archive.read_bytes()
    assert load_data(DataConfig(source=str(dest))).name == "cifar10"  # a folder holding the archive


def test_palette_with_transparency_and_exif_orientation() -> None:
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([5, 6, 7] + [0] * 765)
    palette.info["transparency"] = 0
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", transparency=0)
    buffer.seek(0)
    assert images_module.decode_image(buffer, 32)[0, 0].tolist() == [5, 6, 7]

    tall = Image.new("RGB", (10, 20), (0, 0, 0))
    tall.paste((255, 255, 255), (0, 0, 10, 10))  # top half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90° clockwise
    buffer = io.BytesIO()
    tall.save(buffer, format="JPEG", exif=exif, quality=95)
    buffer.seek(0)
    out = images_module.decode_image(buffer, 20)
    assert out[10, 15].min() > 200 and out[10, 4].max() < 60  # white ends up on the right
