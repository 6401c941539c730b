"""The pieces of a run that the trainer builds from its config: the split and the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from camssl.config import TrainConfig
from camssl.data import DataBundle, Split, make_split
from camssl.errors import UserError
from camssl.models import build_model


def resolve_split(cfg: TrainConfig, bundle: DataBundle, run_dir: Path, resume: bool, given: Split | None) -> Split:
    """The run's split: its split.json on resume (the truth), else ``given``, else a new seeded one."""
    path = run_dir / "split.json"
    if resume and path.exists():
        split = Split.load(path)
        if split.fingerprint != bundle.fingerprint:
            raise UserError(
                f"the data of '{run_dir}' differs from the data found now (fingerprint "
                f"{split.fingerprint} vs {bundle.fingerprint}); resume with the same data.source"
            )
        if given is not None and not _same_split(split, given):
            raise UserError(f"the split given to resume '{run_dir}' differs from its split.json; resume without one")
        return split
    if given is not None:
        if given.fingerprint != bundle.fingerprint:
            raise UserError(
                f"the given split belongs to other data (fingerprint {given.fingerprint}, data {bundle.fingerprint}); "
                "make it from the same data"
            )
        return given
    return make_split(bundle.train.labels, len(bundle.train.classes), cfg.split, bundle.fingerprint,
                      class_names=bundle.train.classes)


def _same_split(a: Split, b: Split) -> bool:
    return all(torch.equal(getattr(a, part), getattr(b, part)) for part in ("labeled", "unlabeled", "val"))


def fit_images(images: torch.Tensor, split: Split, n: int = 5000) -> torch.Tensor:
    """The first ``n`` training images (labeled and unlabeled, never validation) for a data-dependent init."""
    first = torch.cat([split.labeled, split.unlabeled]).sort().values[:n]
    return images[first.to(images.device)]


def new_model(cfg: TrainConfig, num_classes: int, device: torch.device, init: Any = None,
              fit_images: torch.Tensor | None = None) -> nn.Module:
    """The model of ``cfg``, initialised from seed ``cfg.seed`` (without touching the global RNG), on ``device``.

    ``init``: optional initial weights — a state_dict, or a run directory / checkpoint file.
    ``fit_images``: training images for a data-dependent init (airnet's whitening; with
    ``model.data_init``), used when the model has one.
    """
    pretrained = cfg.model.pretrained if init is None and fit_images is not None else None  # a fresh run only
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        args = cfg.model.build_args(num_classes)
        net = build_model(args.pop("name"), args.pop("num_classes"), pretrained=pretrained,
                          pretrained_sha256=cfg.model.pretrained_sha256, **args)
    if fit_images is not None and pretrained is None and cfg.model.data_init and hasattr(net, "init_from_data"):
        net.init_from_data(fit_images, cfg.augment.mean, cfg.augment.std)
    if init is not None:
        net.load_state_dict(_init_weights(init), strict=True)
    net = net.to(device)
    if cfg.model.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def _init_weights(init: Any) -> dict[str, torch.Tensor]:
    if isinstance(init, dict):
        return init
    from camssl.models.saved import load_model

    return load_model(Path(init)).model.state_dict()


def start_epoch(net: nn.Module, epoch: int, cfg: TrainConfig) -> None:
    """The model's hook before each epoch (airnet freezes its whitening bias after ``model.whiten_bias_epochs``)."""
    hook = getattr(net, "start_epoch", None)
    if hook is not None:
        hook(epoch, cfg.model.whiten_bias_epochs)


def check_layers(cfg: TrainConfig, net: nn.Module) -> None:
    """Resolve ``auto`` map layers (the model's last spatial stage; config.yaml then records the layer) and
    refuse layer names (the method's map layers, the diagnostic layer) that the model does not have."""
    from camssl.cam import auto_layer

    cfg.method.resolve_auto_layers(net)
    if cfg.map_layer == "auto":
        cfg.map_layer = auto_layer(net)
    for name in cfg.method.cam_layers():
        net.check_layer(name, key="method.gradcam.layers")
    net.check_layer(cfg.diagnostic_layer(), key="map_layer" if cfg.map_layer else "method.gradcam.layers")
