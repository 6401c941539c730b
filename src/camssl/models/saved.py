"""A trained model as a file: what a checkpoint says about itself, and loading it back.

Every ``best.pt`` / ``last.pt`` a run writes carries, beside the weights:

- ``model_spec``: the arguments of :func:`camssl.models.build_model` (name, num_classes,
  width, ...), so the network is rebuilt without the run's config;
- ``classes``: the class names, in output order;
- ``preprocess``: what the model expects of an image — ``image_size`` (H, W), ``mean``,
  ``std`` (on [0, 1] RGB) and ``resize`` (how another size is brought to ``image_size``).

So a checkpoint alone is enough to predict (:func:`load_model`). Checkpoints written before
these keys existed are read through their run directory's ``config.yaml`` instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from camssl.errors import UserError

RESIZE_RULE = "bilinear resize of the whole image to image_size (no crop), then normalise with mean and std"


def preprocess_spec(image_size: tuple[int, ...], mean: Any, std: Any) -> dict[str, Any]:
    """The ``preprocess`` entry of a checkpoint: the input size, normalisation and resize rule."""
    return {"image_size": list(image_size), "mean": list(mean), "std": list(std), "resize": RESIZE_RULE}


@dataclass
class SavedModel:
    """A trained model in eval mode on the CPU, with what it needs to be used."""

    model: nn.Module
    classes: list[str]
    preprocess: dict[str, Any]
    spec: dict[str, Any]
    path: Path  # the checkpoint file
    state: dict[str, Any] = field(default_factory=dict, repr=False)  # the rest of the checkpoint


RESUME_FIX = "delete it to restart the run from epoch 1, or start a new run with --out"
MODEL_FIX = "give the best.pt or last.pt of a camssl training run (or its run directory)"


def read_checkpoint(path: Path, fix: str = RESUME_FIX) -> Any:
    """``torch.load(path, weights_only=True)`` with a one-line error for an unreadable file, ending in ``fix``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt file is a user-facing problem
        raise UserError(
            f"cannot read checkpoint '{path}': {e.__class__.__name__}; it may be corrupt or not a camssl "
            f"checkpoint; {fix}"
        ) from None


def error_detail(e: BaseException, limit: int = 200) -> str:
    """The informative line of an exception (load_state_dict's first line only says "Error(s) in ...")."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    detail = next((line for line in lines if not line.startswith("Error(s) in loading")), lines[0] if lines else repr(e))
    detail = detail.rstrip(".")
    return detail if len(detail) <= limit else detail[: limit - 3] + "..."


def checkpoint_file(path: str | Path, checkpoint: str = "best") -> tuple[Path, Path]:
    """(run directory, checkpoint file) of a run directory (its ``<checkpoint>.pt``) or a ``.pt`` file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"'{path}' does not exist; pass a camssl run directory (the --out of a training run) "
                        "or its best.pt / last.pt")
    if path.is_dir():
        file = path / f"{checkpoint}.pt"
        if not file.exists():
            if not (path / "config.yaml").exists():
                raise UserError(f"'{path}' is not a camssl run directory (no config.yaml); pass the --out of a "
                                "training run")
            raise UserError(f"no {file.name} in '{path}' yet (train at least one epoch), or use --checkpoint last")
        return path, file
    return path.parent, path


def _legacy_spec(run_dir: Path, num_classes: int) -> dict[str, Any]:
    """The model spec of a checkpoint written before ``model_spec`` existed, from its run's config.yaml."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise UserError(f"checkpoint in '{run_dir}' does not describe its model and has no config.yaml beside it; "
                        "keep the checkpoint in its run directory")
    model = (yaml.safe_load(cfg_path.read_text()) or {}).get("model") or {}
    return {"name": model.get("name", "resnet18"), "num_classes": num_classes, "width": model.get("width", 1.0),
            "resize_to": model.get("resize_to")}


def load_model(path: str | Path, checkpoint: str = "best", weights: str = "eval") -> SavedModel:
    """The model of a run directory or checkpoint file, in eval mode on the CPU.

    ``weights``: ``eval`` — the weights the run evaluates (its EMA where it kept one);
    ``model`` — the raw trained weights.
    """
    from camssl.models import build_model

    run_dir, file = checkpoint_file(path, checkpoint)
    state = read_checkpoint(file, MODEL_FIX)  # not a resume: deleting the file restarts nothing
    if not isinstance(state, dict) or "model" not in state or "classes" not in state:
        raise UserError(f"'{file}' is not a camssl checkpoint (best.pt or last.pt of a training run)")
    classes = [str(c) for c in state["classes"]]
    spec = dict(state.get("model_spec") or _legacy_spec(run_dir, len(classes)))
    model = build_model(**spec)
    chosen = state["ema"] if weights == "eval" and state.get("ema") is not None else state["model"]
    try:
        model.load_state_dict(chosen)
    except RuntimeError as e:
        raise UserError(f"'{file}' does not fit the model it describes ({spec.get('name')}): {error_detail(e)}") from None
    preprocess = dict(state.get("preprocess") or {})
    return SavedModel(model.eval(), classes, preprocess, spec, file, state)


def load_frozen(path: str | Path, device: torch.device) -> nn.Module:
    """A trained run's model on ``device`` in eval mode, without gradients (e.g. a distillation teacher)."""
    model = load_model(path).model.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def fingerprint(module: nn.Module) -> str:
    """A short hash of a model's weights (identifies a frozen model across resumes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
