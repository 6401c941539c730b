"""Pretrained weights that download and verify themselves: a path, a URL, ``hf://repo/file`` or a named set.

``model.pretrained`` may be:

- a local file (a state_dict, as today);
- an ``http(s)://`` URL: fetched once into the torch hub cache (``$TORCH_HOME/hub/checkpoints``,
  :func:`torch.hub.get_dir`), then read from there without a request; with
  ``model.pretrained_sha256`` (all 64 hex digits, or a prefix of at least 8) the file's
  SHA-256 is checked after the download and on every later use;
- ``hf://owner/repo/path/in/repo.pt``: a file of the Hugging Face Hub, through
  ``huggingface_hub`` (``pip install "camssl[hub]"``), which keeps its own cache;
- a name in :data:`NAMED`, e.g. ``torchvision:resnet50`` (torchvision's ImageNet ResNet-50
  weights, which fit ``resnet50_imagenet``; the hash is torchvision's, taken from the file name).

A download is written to a temporary file beside its destination and moved into place only
when it is complete and its hash matches, so an interrupted download never leaves a file
that a later run would trust. Offline with an empty cache, the error says where to put the file.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from camssl.errors import UserError

# torchvision's published ImageNet weights (the 8 hex digits in each file name are the start of its SHA-256)
NAMED = {
    "torchvision:resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "torchvision:resnet50.IMAGENET1K_V1": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "torchvision:resnet50.IMAGENET1K_V2": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
}
TIMEOUT_S = 30.0
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """Where downloaded weights are kept: torch's hub cache (``$TORCH_HOME/hub/checkpoints``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_pretrained(spec: str, sha256: str | None = None) -> Path:
    """The local file of ``spec`` (see the module doc), downloading it first when needed."""
    if spec in NAMED:
        url = NAMED[spec]
        return download(url, sha256 or Path(urlparse(url).path).stem.rsplit("-", 1)[-1])
    if spec.startswith(("http://", "https://")):
        return download(spec, sha256)
    if spec.startswith("hf://"):
        return _from_hub(spec, sha256)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"pretrained weights '{spec}' not found; give the path of a saved state_dict (.pt/.pth), a URL, "
                        f"hf://repo/file or one of: {', '.join(sorted(NAMED))}")
    if sha256:
        _check_hash(path, sha256, spec)
    return path


def _check_hash(path: Path, expected: str, source: str) -> None:
    got = file_sha256(path)
    if not got.startswith(expected.lower()):
        raise UserError(f"'{path}' (from {source}) has SHA-256 {got[:16]}..., expected {expected[:16]}...; "
                        "delete it to download it again, or check model.pretrained_sha256")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, sha256: str | None = None, folder: Path | None = None) -> Path:
    """``url`` as a file in ``folder`` (default: :func:`cache_dir`), fetched only when it is not there yet."""
    folder = folder or cache_dir()
    dest = folder / (Path(urlparse(url).path).name or "weights.pt")
    if dest.is_file():
        if sha256:
            _check_hash(dest, sha256, url)
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        _fetch(url, tmp, dest)
        if sha256:
            _check_hash(tmp, sha256, url)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _fetch(url: str, tmp: Path, dest: Path) -> None:
    where = f"download it yourself and put it at {dest}, or give model.pretrained=PATH"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(tmp, "wb") as f:  # noqa: S310
            expected = response.headers.get("Content-Length")
            size = 0
            for block in iter(lambda: response.read(_CHUNK), b""):
                f.write(block)
                size += len(block)
    except urllib.error.HTTPError as e:
        raise UserError(f"cannot download {url}: HTTP {e.code} {e.reason}; check the address, or {where}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(f"cannot download {url} ({reason}); without internet, {where}") from None
    if expected is not None and size != int(expected):
        raise UserError(f"the download of {url} stopped after {size} of {expected} bytes; try again, or {where}")


def _from_hub(spec: str, sha256: str | None) -> Path:
    parts = spec.removeprefix("hf://").split("/")
    if len(parts) < 3:
        raise UserError(f"model.pretrained={spec!r}: write hf://owner/repo/path/to/file")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise UserError('hf:// weights need huggingface_hub: pip install "camssl[hub]"') from None
    repo, file = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        path = Path(hf_hub_download(repo_id=repo, filename=file))
    except Exception as e:  # noqa: BLE001 - the hub client raises many kinds; one line for each
        raise UserError(f"cannot fetch {spec} from the Hugging Face Hub ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); download it yourself and give "
                        "model.pretrained=PATH") from None
    if sha256:
        _check_hash(path, sha256, spec)
    return path
