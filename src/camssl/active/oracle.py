"""Who reveals the queried labels: the data's own labels (``simulated``) or a person (``files``; Label Studio:
:mod:`camssl.active.labelstudio`).

The ``files`` oracle writes each queried image as a PNG file into
``OUT/queries/cycle_<c>/`` and a CSV ``OUT/queries/cycle_<c>.csv`` with the columns
``file,label`` (the label column empty); the person fills in one class name per row and
runs ``camssl active --out OUT --resume``. The CSV is then checked as a whole before any
label is used: every queried file exactly once, no other file, every label a class of the
data (one-line errors naming the row, the value and the valid choices). As a spreadsheet
saves it: a class name matches whatever its case and surrounding spaces (``Airplane``,
``automobile ``), a UTF-8 byte-order mark and CRLF line ends are fine; a name that matches
no class, or two classes that differ only in case, is refused.
"""

from __future__ import annotations

import csv
import io as _stdio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from camssl import io
from camssl.errors import UserError

COLUMNS = ("file", "label")


def query_name(index: int) -> str:
    """The file name of training image ``index`` in a query folder."""
    return f"{index:06d}.png"


def query_paths(out: Path, cycle: int) -> tuple[Path, Path]:
    """(the CSV, the folder of images) of the query that labels cycle ``cycle``."""
    return out / "queries" / f"cycle_{cycle}.csv", out / "queries" / f"cycle_{cycle}"


def write_query(out: Path, cycle: int, indices: Sequence[int], images: Tensor) -> Path:
    """Write the queried images (uint8 N×3×H×W, all training images) as PNGs and the CSV to fill in; returns the CSV."""
    csv_path, _ = query_paths(out, cycle)
    write_images(out, cycle, indices, images)
    rows = _stdio.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows([query_name(i), ""] for i in indices)
    io.write_text(csv_path, rows.getvalue())
    return csv_path


def write_images(out: Path, cycle: int, indices: Sequence[int], images: Tensor) -> Path:
    """Write the queried images (uint8 N×3×H×W, all training images) as PNGs into the query's folder; returns it."""
    folder = query_paths(out, cycle)[1]
    folder.mkdir(parents=True, exist_ok=True)
    for i in indices:
        buf = _stdio.BytesIO()
        Image.fromarray(images[i].permute(1, 2, 0).cpu().numpy().astype(np.uint8)).save(buf, format="PNG")
        io.write_bytes(folder / query_name(i), buf.getvalue())
    return folder


def match_class(label: str, classes: Sequence[str], where: str, item: str = "") -> int:
    """The class id of ``label``: exact, else the one class equal to it ignoring case and surrounding spaces.

    :class:`UserError` (one line, starting with ``where``, naming ``item`` when given) for no match or an
    ambiguous one.
    """
    if label in classes:
        return list(classes).index(label)
    key = label.strip().casefold()
    hits = [k for k, c in enumerate(classes) if c.strip().casefold() == key]
    if len(hits) == 1:
        return hits[0]
    of = f" for {item}" if item else ""
    if not hits:
        raise UserError(f"{where}: unknown class '{label}'{of}; valid classes: {', '.join(classes)}")
    raise UserError(f"{where}: class '{label}'{of} matches {', '.join(classes[k] for k in hits)} (they differ only in "
                    "case); write the class name exactly")


def read_labels(csv_path: Path, indices: Sequence[int], classes: Sequence[str],
                resume: str = "camssl active --out DIR --resume") -> Tensor:
    """The labels (class ids, in the order of ``indices``) that a person wrote into ``csv_path``.

    :class:`UserError` (one line) for a missing file or column, a file name that was not
    queried or appears twice, a class name the data does not have, or a row left empty;
    ``resume`` is the command the messages tell the person to run next.
    """
    fix = f"fix '{csv_path}' and run {resume} again"
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"the labels file '{csv_path}' is missing; it lists the queried images to label") from None
    reader = csv.DictReader(_stdio.StringIO(text))
    if reader.fieldnames is None or not set(COLUMNS) <= {f.strip() for f in reader.fieldnames}:
        raise UserError(f"labels file '{csv_path}' needs the columns {','.join(COLUMNS)} (header row); {fix}")
    wanted = {query_name(i): k for k, i in enumerate(indices)}
    labels = [-1] * len(indices)
    seen: set[str] = set()
    for line, row in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        name, label = row.get("file", ""), row.get("label", "")
        if not name and not label:
            continue
        if name not in wanted:
            raise UserError(f"labels file '{csv_path}', line {line}: unknown file '{name}' (not one of the "
                            f"{len(indices)} queried images); {fix}")
        if name in seen:
            raise UserError(f"labels file '{csv_path}', line {line}: file '{name}' is listed twice; {fix}")
        seen.add(name)
        k = wanted[name]
        if not label:
            continue
        labels[k] = match_class(label, classes, f"labels file '{csv_path}', line {line}", f"'{name}'")
    missing = [query_name(i) for i, y in zip(indices, labels, strict=True) if y == -1]
    if missing:
        raise UserError(f"{len(missing)} of the {len(indices)} queried images in '{csv_path}' have no label yet "
                        f"(first: {missing[0]}); fill in the label column with class names, then run {resume}")
    return torch.tensor(labels, dtype=torch.long)
