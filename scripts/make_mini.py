"""Build the embedded mini CIFAR-10 set, ``src/camssl/assets/mini_cifar10.npz``.

Regenerate (from the repository root; takes a few seconds)::

    python scripts/make_mini.py                       # reads ../shared/data/cifar10-jpg.tar.gz
    python scripts/make_mini.py --archive PATH --out PATH

Input: the CIFAR-10 JPEG archive (``train/<class>/NNNN.jpg``, 5000 per class, and
``test/<class>/NNNN.jpg``, 1000 per class), read member by member straight from the
``.tar.gz`` (nothing is unpacked). For every class (sorted by name) it picks
``--train-per-class`` (250) training and ``--test-per-class`` (50) test files: the file
names are sorted and the picks drawn with ``numpy.random.Generator(PCG64(--seed))``, so the
selection is fixed. The ORIGINAL JPEG bytes are stored (never re-encoded), concatenated, in
the layout documented in :mod:`camssl.data.mini`. The output is byte-for-byte deterministic
(fixed zip timestamps and member order). It fails if the file would exceed ``--max-bytes``
(2.9 MB); use ``--train-per-class 200`` then.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import zipfile
from collections import defaultdict
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
DEFAULT_OUT = REPO / "src" / "camssl" / "assets" / "mini_cifar10.npz"
MAX_BYTES = 2_900_000


def read_archive(archive: Path) -> dict[str, dict[str, dict[str, bytes]]]:
    """{split: {class: {file name: JPEG bytes}}} for every ``<split>/<class>/<file>.jpg`` member."""
    found: dict[str, dict[str, dict[str, bytes]]] = defaultdict(lambda: defaultdict(dict))
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if member.isfile() and len(parts) == 3 and parts[0] in ("train", "test") and parts[2].endswith(".jpg"):
                stream = tar.extractfile(member)
                assert stream is not None
                found[parts[0]][parts[1]][parts[2]] = stream.read()
    return found


def select(files: dict[str, bytes], count: int, rng: np.random.Generator) -> list[bytes]:
    names = sorted(files)
    if len(names) < count:
        sys.exit(f"error: only {len(names)} files, {count} wanted")
    picks = np.sort(rng.choice(len(names), size=count, replace=False))
    return [files[names[i]] for i in picks]


def write_npz(out: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed, but with fixed timestamps so the file is reproducible."""
    with zipfile.ZipFile(out, "w") as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue(), compresslevel=9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--train-per-class", type=int, default=250)
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES)
    args = parser.parse_args()

    found = read_archive(args.archive)
    classes = sorted(found["train"])
    if not classes or classes != sorted(found["test"]):
        sys.exit(f"error: {args.archive} does not hold train/<class>/ and test/<class>/ with the same classes")
    rng = np.random.Generator(np.random.PCG64(args.seed))
    blobs: list[bytes] = []
    labels: list[int] = []
    is_test: list[bool] = []
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        for label, name in enumerate(classes):
            for blob in select(found[split][name], per_class, rng):
                with Image.open(io.BytesIO(blob)) as img:  # every stored image must be a 32×32 JPEG
                    img.load()
                    if img.format != "JPEG" or img.size != (32, 32):
                        sys.exit(f"error: a {split}/{name} image is {img.format} {img.size}, not a 32×32 JPEG")
                blobs.append(blob)
                labels.append(label)
                is_test.append(split == "test")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_npz(
        args.out,
        {
            "jpeg": np.frombuffer(b"".join(blobs), dtype=np.uint8),
            "offsets": np.cumsum([0] + [len(b) for b in blobs], dtype=np.int64),
            "labels": np.asarray(labels, dtype=np.int64),
            "is_test": np.asarray(is_test, dtype=bool),
            "classes": np.asarray(classes, dtype=np.str_),
        },
    )
    size = args.out.stat().st_size
    n_test = sum(is_test)
    print(f"wrote {args.out}: {len(blobs) - n_test} train + {n_test} test images, {len(classes)} classes, {size} bytes")
    if size > args.max_bytes:
        args.out.unlink()
        sys.exit(f"error: {size} bytes is over {args.max_bytes}; rerun with --train-per-class 200")


if __name__ == "__main__":
    main()
