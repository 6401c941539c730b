"""Classifying new images with a trained model: inputs, batched prediction, the table of results, CAM overlays.

``camssl predict RUN_DIR|CHECKPOINT INPUT... --out FILE`` is built from these pieces; they
work from Python too::

    from camssl.inference import Predictor, collect_inputs
    predictor = Predictor.load("runs/my-run")            # or a best.pt / last.pt file
    rows = predictor.predict_files(collect_inputs(["photos/"]), topk=3)

The model and its preprocessing come from the checkpoint alone
(:mod:`camssl.models.saved`): each image is decoded to RGB, resized as a whole to the
training size with the same filter as the training data (:mod:`camssl.data.images`), and
normalised with the run's mean and std.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camssl.data.images import DECODE_ERRORS, IMAGE_EXTENSIONS, decode_image, stack_hwc, unreadable_image_error
from camssl.errors import UserError
from camssl.models.saved import SavedModel, load_model
from camssl.train.evaluate import tta_logits

LIST_SUFFIXES = (".csv", ".txt")


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files of ``inputs``: files, folders (recursively, sorted) and CSV/TXT lists of paths.

    A list holds one path per line (TXT) or per row (CSV: the column ``file`` or ``path``, else
    the first); relative paths are relative to the list's folder. One-line error for a path
    that does not exist or a list or folder without images.
    """
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                           and not p.name.startswith("."))
            if not found:
                raise UserError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in folder '{item}'")
            out += found
        elif item.suffix.lower() in LIST_SUFFIXES and item.is_file():
            out += _listed(item)
        elif item.is_file():
            out.append(item)
        else:
            raise UserError(f"input '{item}' does not exist; give image files, folders or a .csv/.txt list of paths")
    if not out:
        raise UserError("no input images; give image files, folders or a .csv/.txt list of paths")
    return out


def _listed(path: Path) -> list[Path]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        rows = list(csv.reader(text.splitlines()))
        header = [c.strip().lower() for c in rows[0]] if rows else []
        col = next((header.index(k) for k in ("file", "path") if k in header), None)
        rows = rows[1:] if col is not None else rows
        names = [r[col or 0].strip() for r in rows if r and r[col or 0].strip()]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not names:
        raise UserError(f"the list '{path}' names no images")
    return [p if p.is_absolute() else path.parent / p for p in map(Path, names)]


@dataclass
class Prediction:
    """One input's result: the top classes with their probabilities, or why it could not be read."""

    file: str
    top: list[tuple[str, float]]  # (class name, probability), most likely first
    entropy: float = math.nan  # of the whole predicted distribution (nats)
    margin: float = math.nan  # probability of the first class minus the second's
    error: str = ""

    def row(self, k: int, with_error: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file}
        for i in range(k):
            label, prob = self.top[i] if i < len(self.top) else ("", math.nan)
            suffix = "" if i == 0 else f"_{i + 1}"
            out[f"label{suffix}"], out[f"prob{suffix}"] = label, prob
        out["entropy"], out["margin"] = self.entropy, self.margin
        if with_error:
            out["error"] = self.error
        return out


class Predictor:
    """A trained model, its class names and preprocessing, ready to classify images."""

    def __init__(self, saved: SavedModel, device: str | torch.device = "cpu", tta: int = 0,
                 batch_size: int = 256) -> None:
        if not saved.preprocess:
            raise UserError(f"'{saved.path}' does not say how its images were preprocessed (written before camssl "
                            "stored it); retrain, or load it with camssl.models.saved.load_model and preprocess yourself")
        self.saved = saved
        self.device = torch.device(device)
        self.model: nn.Module = saved.model.to(self.device).eval()
        self.classes = saved.classes
        self.size = int(saved.preprocess["image_size"][0])
        self.mean = torch.tensor(saved.preprocess["mean"], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(saved.preprocess["std"], device=self.device).view(1, 3, 1, 1)
        self.tta, self.batch_size = tta, batch_size

    @classmethod
    def load(cls, path: str | Path, checkpoint: str = "best", **kwargs: Any) -> Predictor:
        """A predictor of a run directory (its ``<checkpoint>.pt``) or a checkpoint file."""
        return cls(load_model(path, checkpoint), **kwargs)

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 N×3×S×S images -> the model's input."""
        return (images.to(self.device).float() / 255.0 - self.mean) / self.std

    @torch.inference_mode()
    def probabilities(self, images: Tensor) -> Tensor:
        """Softmax of the model on uint8 N×3×S×S images (in batches)."""
        out = [F.softmax(tta_logits(self.model, self.normalize(images[i:i + self.batch_size]), self.tta).float(), 1)
               for i in range(0, len(images), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def decode(self, path: Path) -> np.ndarray:
        return decode_image(path, self.size)

    def batches(self, paths: Sequence[Path], skip_bad: bool) -> Iterator[tuple[list[Path], Tensor, list[Prediction]]]:
        """(readable paths, their uint8 images, rows of the unreadable ones) per batch of files."""
        for start in range(0, len(paths), self.batch_size):
            ok, arrays, bad = [], [], []
            for p in paths[start:start + self.batch_size]:
                try:
                    arrays.append(self.decode(p))
                    ok.append(p)
                except DECODE_ERRORS as e:
                    if not skip_bad:
                        raise unreadable_image_error(str(p), f"{type(e).__name__}: {e}") from None
                    bad.append(Prediction(str(p), [], error=f"{type(e).__name__}: {' '.join(str(e).split())}"))
            images = stack_hwc(np.stack(arrays)) if arrays else torch.zeros(0, 3, self.size, self.size, dtype=torch.uint8)
            yield ok, images, bad

    def rows(self, paths: Sequence[Path], probs: Tensor, topk: int) -> list[Prediction]:
        """Predictions of ``paths`` from their probabilities."""
        k = min(max(topk, 2), probs.shape[1])
        values, index = probs.topk(k, dim=1)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1)
        out = []
        for i, p in enumerate(paths):
            top = [(self.classes[int(j)], float(v)) for v, j in zip(values[i], index[i])]
            margin = top[0][1] - top[1][1] if len(top) > 1 else math.nan
            out.append(Prediction(str(p), top[:topk], float(entropy[i]), margin))
        return out


def write_table(predictions: Sequence[Prediction], out: Path, topk: int, with_error: bool, force: bool) -> Path:
    """The predictions as CSV or JSON (by ``out``'s extension), written atomically; refuses to replace a file
    unless ``force``."""
    from camssl import io

    out = Path(out)
    check_output(out, force)
    rows = [p.row(topk, with_error) for p in predictions]
    if out.suffix.lower() == ".json":
        io.write_json(out, rows)
    else:
        header = list(rows[0]) if rows else ["file", "label", "prob", "entropy", "margin"]
        lines = [",".join(header)] + [",".join(_cell(r[h]) for h in header) for r in rows]
        io.write_text(out, "\n".join(lines) + "\n")
    return out


def check_output(out: Path, force: bool) -> None:
    """One-line errors, before any work: an output that exists (without ``force``), or of an unknown kind."""
    if out.suffix.lower() not in (".csv", ".json"):
        raise UserError(f"--out '{out}': give a .csv or .json file")
    if out.exists() and not force:
        raise UserError(f"'{out}' already exists; pass --force to replace it, or choose another --out")
    if not out.parent.exists():
        raise UserError(f"the folder of --out '{out}' does not exist; create it first")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    text = str(value)
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\n') else text


def cam_overlays(predictor: Predictor, paths: Sequence[Path], images: Tensor, classes: Tensor, layer: str,
                 folder: Path, used: set[str]) -> list[Path]:
    """A PNG per image, ``<name>_cam.png`` in ``folder``: its Grad-CAM map (of ``classes``) at ``layer`` over the
    image (shrunk to at most 512 px, small images enlarged to at least 128 px). ``used``: the names written so far (two images of one name get ``_2``, ``_3``...)."""
    from PIL import Image

    from camssl.cam import grad_cam, normalize_maps, upsample_maps

    folder.mkdir(parents=True, exist_ok=True)
    x = predictor.normalize(images).requires_grad_(False)
    with torch.enable_grad():
        logits, feats = predictor.model(x, taps=[layer])
        maps = grad_cam(logits, feats, classes.to(predictor.device), model=predictor.model)[layer].detach()
    maps = normalize_maps(maps, "max")
    written = []
    for p, m in zip(paths, maps):
        with Image.open(p) as img:
            base = img.convert("RGB")
        base.thumbnail((512, 512))
        if max(base.size) < 128:  # small images (CIFAR's 32 px): enlarged so the map can be seen
            k = -(-128 // max(base.size))
            base = base.resize((base.width * k, base.height * k), Image.Resampling.NEAREST)
        heat = upsample_maps(m[None], (base.height, base.width))[0].clamp(0, 1).cpu().numpy()
        overlay = (0.5 * np.asarray(base, dtype=np.float32) + 0.5 * 255 * _jet(heat)).clip(0, 255).astype(np.uint8)
        name, k = f"{p.stem}_cam.png", 2
        while name in used:
            name, k = f"{p.stem}_cam_{k}.png", k + 1
        used.add(name)
        _save_png(Image.fromarray(overlay), folder / name)
        written.append(folder / name)
    return written


def _jet(x: np.ndarray) -> np.ndarray:
    """The jet colour map of values in [0, 1] (H×W -> H×W×3 in [0, 1])."""
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return np.stack([r, g, b], axis=-1)


def _save_png(img: Any, dest: Path) -> None:
    from camssl import io

    with io.atomic_path(dest) as tmp:
        img.save(tmp, format="PNG")
