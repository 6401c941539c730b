"""Downloading the official CIFAR-10 python archive."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from camssl.data.cifar import ARCHIVE_NAME
from camssl.errors import DataError
from camssl.io import atomic_path

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
_CHUNK = 1 << 20


def download_cifar10(dest_dir: str | Path, url: str = OFFICIAL_URL, md5: str = OFFICIAL_MD5) -> Path:
    """Download ``url`` to ``dest_dir/cifar-10-python.tar.gz`` and return that path.

    A file already there with the right MD5 is kept and nothing is downloaded. Otherwise the
    archive is streamed into a temporary file in ``dest_dir`` (with a progress bar on a
    terminal), its MD5 checked, and only then moved into place, so an interrupted or corrupt
    download never replaces a good file. Any failure raises a one-line :class:`DataError`.
    """
    dest = Path(dest_dir).expanduser() / ARCHIVE_NAME
    if dest.is_file() and _file_md5(dest) == md5:
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create download folder '{dest.parent}' ({exc}); choose a writable folder") from exc
    with atomic_path(dest) as tmp:
        digest = hashlib.md5()
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=ARCHIVE_NAME, disable=None) as bar:
                    while chunk := response.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        bar.update(len(chunk))
        except (OSError, ValueError) as exc:  # URLError/HTTPError/timeouts are OSErrors; ValueError: bad URL
            reason = " ".join(str(getattr(exc, "reason", exc)).split())
            raise DataError(
                f"could not download {url} ({reason}); check the network connection, or download the file "
                f"yourself into '{dest.parent}'"
            ) from exc
        if digest.hexdigest() != md5:
            raise DataError(
                f"downloaded {url} has MD5 {digest.hexdigest()}, expected {md5}; the download is corrupt "
                "or the URL is wrong, try again"
            )
    return dest


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
