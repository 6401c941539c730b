"""A trained model as an ONNX file, with its class names and preprocessing in the file's metadata.

``camssl export RUN_DIR --format onnx --out model.onnx [--check]``. The graph takes a float32
batch ``images`` (N×3×H×W, any N, already normalised: RGB in [0, 1], minus ``mean``, divided
by ``std``) and returns ``logits`` (N×classes). The metadata (``onnx.ModelProto.metadata_props``)
holds, as JSON: ``camssl.classes``, ``camssl.preprocess`` (image_size, mean, std, resize rule)
and ``camssl.model_spec``. ``--check`` runs ONNX Runtime and PyTorch on the same real images
and requires identical top-1 classes and softmax probabilities within :data:`CHECK_TOLERANCE`.

Needs the ``export`` extra: ``pip install "camssl[export]"`` (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import contextlib
import io as _stdio
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from camssl import io
from camssl.errors import UserError
from camssl.models.saved import SavedModel

CHECK_TOLERANCE = 1e-4  # max |p_onnx - p_torch| of the softmax probabilities (docs/usage.md has what was measured)
OPSET = 18


class _Logits(nn.Module):
    """The model as a plain ``images -> logits`` module (no taps), for tracing."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise UserError(f"camssl export needs {module}: pip install \"camssl[export]\" (onnx, onnxruntime, "
                        "onnxscript)") from None


def export_onnx(saved: SavedModel, out: Path, opset: int = OPSET) -> Path:
    """Write ``saved``'s model to ``out`` (atomically) with a dynamic batch dimension and camssl's metadata."""
    onnx = _require("onnx")
    _require("onnxscript")
    size = [int(v) for v in saved.preprocess.get("image_size", [32, 32])]
    example = torch.zeros(2, 3, *size)
    model = _Logits(saved.model.eval())
    with _quiet(), io.atomic_path(out) as tmp:
        torch.onnx.export(model, (example,), str(tmp), input_names=["images"], output_names=["logits"],
                          dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, dynamo=True,
                          opset_version=opset, verbose=False)
        proto = onnx.load(str(tmp))
        meta = {"camssl.classes": saved.classes, "camssl.preprocess": saved.preprocess,
                "camssl.model_spec": saved.spec}
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        onnx.save(proto, str(tmp))
    return out


def read_metadata(path: Path) -> dict[str, Any]:
    """The camssl metadata of an exported file (classes, preprocess, model_spec)."""
    onnx = _require("onnx")
    proto = onnx.load(str(path))
    return {p.key.removeprefix("camssl."): json.loads(p.value) for p in proto.metadata_props
            if p.key.startswith("camssl.")}


def check_onnx(path: Path, saved: SavedModel, images: Tensor) -> dict[str, float]:
    """Compare ONNX Runtime with PyTorch on uint8 ``images``; UserError when they disagree."""
    ort = _require("onnxruntime")
    pre = saved.preprocess
    mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
    x = (images.float() / 255.0 - mean) / std
    with torch.inference_mode():
        ref = saved.model.eval()(x).float()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(np.asarray(session.run(["logits"], {"images": x.numpy()})[0]))
    p_ref, p_got = ref.softmax(1), got.softmax(1)
    stats = {"images": float(len(images)), "max_prob_diff": float((p_ref - p_got).abs().max()),
             "max_logit_diff": float((ref - got).abs().max()),
             "top1_agreement": float((ref.argmax(1) == got.argmax(1)).float().mean())}
    if stats["top1_agreement"] < 1.0 or stats["max_prob_diff"] > CHECK_TOLERANCE:
        raise UserError(f"ONNX Runtime and PyTorch disagree on {len(images)} images (top-1 agreement "
                        f"{stats['top1_agreement']:.4f}, max probability difference {stats['max_prob_diff']:.2e} > "
                        f"{CHECK_TOLERANCE:.0e}); report it with the model's config")
    return stats


@contextlib.contextmanager
def _quiet():  # type: ignore[no-untyped-def]
    """The exporter's progress lines and warnings off (its errors still raise)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(_stdio.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
