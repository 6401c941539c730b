"""Using a trained model: camssl predict, camssl export to ONNX, your own backbone, pretrained weights that download.

The downloads are tested against a real HTTP server that each test starts on loopback
(127.0.0.1): a good file (fetched once, then read from the cache without a request), a wrong
hash, a 404, a truncated body, and a closed port (no network).
"""

from __future__ import annotations

import csv
import hashlib
import http.server
import json
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camssl.cli import main
from camssl.errors import UserError
from camssl.models import build_model
from camssl.models import pretrained as pre

TINY = ["--width", "0.125", "--labeled", "200", "--ratio", "1", "--epochs", "1", "optim.steps_per_epoch=4",
        "optim.batch_size=32", "amp=false", "cam_grid=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("use") / "run"
    assert main(["train", "--method", "supervised", *TINY, "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def test_pngs(tmp_path_factory) -> Path:
    """The mini set's 500 test images as PNG files in class folders."""
    from camssl.config import load_config
    from camssl.data import load_data

    root = tmp_path_factory.mktemp("pngs")
    test = load_data(load_config("demo").data).test
    for i, (img, label) in enumerate(zip(test.images, test.labels)):
        folder = root / test.classes[int(label)]
        folder.mkdir(exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")
    return root


def test_predict_on_the_test_images_gives_the_runs_test_accuracy(trained, test_pngs, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(["predict", str(trained), str(test_pngs), "--out", str(out), "--topk", "3"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 500 and {"label", "prob", "label_3", "prob_3", "entropy", "margin"} <= set(rows[0])
    acc = sum(r["label"] == Path(r["file"]).parent.name for r in rows) / len(rows)
    result = json.loads((trained / "result.json").read_text())
    assert round(acc * 500) == round(result["test_acc_at_best_val"] * 500)  # the same images right, one by one
    r = rows[0]
    assert float(r["prob"]) >= float(r["prob_2"]) >= float(r["prob_3"])
    assert float(r["margin"]) == pytest.approx(float(r["prob"]) - float(r["prob_2"]), abs=1e-5)
    assert "images/s" in capsys.readouterr().out


def _png_16bit(path: Path) -> None:
    Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)).save(path)


def _huge_png(path: Path) -> None:
    """A PNG whose header says 30000 x 30000 pixels (PIL refuses it as a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("odd")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(d / "one_pixel.png")
    _png_16bit(d / "sixteen_bit.png")
    Image.new("CMYK", (40, 30), (0, 128, 128, 0)).save(d / "cmyk.jpg")
    Image.new("RGBA", (33, 33), (0, 0, 255, 100)).save(d / "rgba.png")
    (d / "corrupt.png").write_bytes(b"not an image at all")
    full = d / "full.jpg"
    Image.new("RGB", (64, 64), (9, 99, 199)).save(full)
    (d / "truncated.jpg").write_bytes(full.read_bytes()[:200])
    _huge_png(d / "huge.png")
    return d


def test_odd_and_unreadable_images_give_rows_or_one_line_errors(trained, odd_images, tmp_path, capsys):
    out = tmp_path / "odd.json"
    assert main(["predict", str(trained), str(odd_images), "--out", str(out), "--skip-bad"]) == 0
    rows = {Path(r["file"]).name: r for r in json.loads(out.read_text())}
    for ok in ("one_pixel.png", "sixteen_bit.png", "cmyk.jpg", "rgba.png", "full.jpg"):
        assert rows[ok]["error"] == "" and rows[ok]["label"], ok
    for bad in ("corrupt.png", "truncated.jpg", "huge.png"):
        assert rows[bad]["error"] and rows[bad]["label"] == "", bad
    capsys.readouterr()
    out2 = tmp_path / "strict.csv"
    assert main(["predict", str(trained), str(odd_images), "--out", str(out2)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot read image" in err and "--skip-bad" in err and "Traceback" not in err
    assert not out2.exists()


def test_predict_never_overwrites_without_force_and_reads_lists(trained, test_pngs, tmp_path, capsys):
    out = tmp_path / "p.csv"
    out.write_text("precious\n")
    assert main(["predict", str(trained), str(test_pngs / "cat"), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_text() == "precious\n"
    listing = tmp_path / "list.txt"
    files = sorted((test_pngs / "dog").glob("*.png"))[:5]
    listing.write_text("\n".join(str(p) for p in files) + "\n")
    assert main(["predict", str(trained), str(listing), "--out", str(out), "--force", "--cam", str(tmp_path / "cams")]) == 0
    assert len(list(csv.DictReader(out.open()))) == 5
    assert len(list((tmp_path / "cams").glob("*_cam.png"))) == 5
    assert main(["predict", str(trained), str(tmp_path / "missing.png"), "--out", str(tmp_path / "x.csv")]) == 2


def test_export_onnx_with_metadata_dynamic_batch_and_check(trained, tmp_path, capsys):
    import onnxruntime as ort

    from camssl.export import read_metadata

    out = tmp_path / "model.onnx"
    assert main(["export", str(trained), "--format", "onnx", "--out", str(out), "--check"]) == 0
    assert "top-1 agreement 100%" in capsys.readouterr().out
    meta = read_metadata(out)
    assert len(meta["classes"]) == 10 and meta["preprocess"]["image_size"] == [32, 32]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        assert session.run(None, {"images": np.zeros((n, 3, 32, 32), np.float32)})[0].shape == (n, 10)
    assert main(["export", str(trained), "--out", str(out)]) == 2  # exists: --force needed


def test_your_own_backbone_trains_with_gradcam_and_draws_maps_with_layer_auto(tmp_path, test_pngs, capsys):
    run = tmp_path / "own"
    args = ["train", "--model", "camssl_test_backbones:small", "model.args={width: 8}", "--method", "gradcam",
            "--layer", "auto", *TINY, "cam_grid=true", "--out", str(run)]
    assert main(args) == 0
    cfg = (run / "config.yaml").read_text()
    assert "- features" in cfg  # auto resolved to the last spatial stage, recorded
    assert main(["cam", str(run), "--layer", "auto"]) == 0
    assert (run / "figures" / "cam_best_features.png").exists()
    assert main(["predict", str(run), str(test_pngs / "cat"), "--out", str(tmp_path / "p.json"), "--cam",
                 str(tmp_path / "cams"), "--layer", "auto"]) == 0
    net = build_model("camssl_test_backbones:small", 10, args={"width": 8})
    assert "scale" in dict(net.named_parameters()) and net.head.out_features == 10


# ---------------------------------------------------------------- pretrained weights over HTTP (loopback)


class _Server:
    """A loopback HTTP server with one file per path; counts the requests; can lie about a body's length.

    It also answers HEAD requests the way the Hugging Face Hub does (a commit and an ETag),
    so ``hf://`` weights are fetched from it with ``HF_ENDPOINT`` pointing here.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _head(self) -> bytes | None:
                outer.requests.append(f"{self.command} {self.path}")
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return None
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Repo-Commit", "0" * 40)
                self.send_header("ETag", '"' + hashlib.sha256(body).hexdigest() + '"')
                self.end_headers()
                return body

            def do_HEAD(self) -> None:  # noqa: N802
                self._head()

            def do_GET(self) -> None:  # noqa: N802
                body = self._head()
                if body is not None:
                    self.wfile.write(body[: len(body) // 2] if self.path in outer.truncate else body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    s = _Server()
    yield s
    s.close()


def _weights(tmp_path: Path) -> bytes:
    path = tmp_path / "w.pt"
    torch.save(build_model("resnet18", 10, width=0.125).state_dict(), path)
    return path.read_bytes()


def test_a_url_is_downloaded_once_checked_and_then_read_from_the_cache(server, tmp_path):
    body = _weights(tmp_path)
    server.files["/w/resnet.pt"] = body
    digest = hashlib.sha256(body).hexdigest()
    path = pre.resolve_pretrained(f"{server.url}/w/resnet.pt", digest)
    assert path.read_bytes() == body and path.parent == pre.cache_dir() and len(server.requests) == 1
    again = build_model("resnet18", 10, width=0.125, pretrained=f"{server.url}/w/resnet.pt", pretrained_sha256=digest[:8])
    assert len(server.requests) == 1  # the cached file: no second request
    assert torch.equal(again.conv1.weight, torch.load(path, weights_only=True)["conv1.weight"])


def test_a_wrong_hash_a_404_a_truncated_body_and_no_network_are_one_line_errors(server, tmp_path):
    server.files["/w/a.pt"] = server.files["/w/t.pt"] = _weights(tmp_path)
    server.truncate.add("/w/t.pt")
    cases = [(f"{server.url}/w/a.pt", "0" * 64, "has SHA-256"), (f"{server.url}/w/missing.pt", None, "HTTP 404"),
             (f"{server.url}/w/t.pt", None, "stopped after")]
    for url, sha, needle in cases:
        with pytest.raises(UserError, match=needle) as e:
            pre.resolve_pretrained(url, sha)
        assert "\n" not in str(e.value)
    assert not list(pre.cache_dir().glob("*")), "a failed download must leave no file the next run would trust"
    server.close()
    with pytest.raises(UserError, match="put it at") as e:
        pre.resolve_pretrained(f"{server.url}/w/a.pt")
    assert str(pre.cache_dir() / "a.pt") in str(e.value)


def test_torchvision_names_map_onto_resnet50_imagenet(server, monkeypatch):
    """torchvision's file names carry the start of their SHA-256; a named set is checked against it."""
    url = f"{server.url}/models/resnet50-0676ba61.pth"
    monkeypatch.setitem(pre.NAMED, "torchvision:resnet50", url)
    server.files["/models/resnet50-0676ba61.pth"] = b"not torchvision's weights"
    with pytest.raises(UserError, match="expected 0676ba61"):
        pre.resolve_pretrained("torchvision:resnet50")
    from camssl.config import load_config

    assert load_config("paper").model.pretrained == "torchvision:resnet50"


def test_hf_weights_come_through_huggingface_hub(server, tmp_path):
    """hf://owner/repo/file through huggingface_hub, its endpoint set to the loopback server (a process of its own:
    the client reads HF_ENDPOINT when it is imported)."""
    import os
    import subprocess
    import sys

    body = _weights(tmp_path)
    server.files["/owner/repo/resolve/main/w/model.pt"] = body
    env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_OFFLINE": "0"}
    code = ("from camssl.models.pretrained import resolve_pretrained; "
            f"print(resolve_pretrained('hf://owner/repo/w/model.pt', '{hashlib.sha256(body).hexdigest()[:12]}'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).read_bytes() == body
    assert any(r.startswith("GET /owner/repo/resolve/main/w/model.pt") for r in server.requests)
