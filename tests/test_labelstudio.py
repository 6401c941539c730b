"""The Label Studio oracle (``camssl active --oracle labelstudio``, ``camssl active-export``, ``--resume --labels``).

File-based: the tasks file and the labelling config (checked against the cycle's model and the
data), Label Studio's JSON, JSON-MIN and CSV exports written as Label Studio writes them (the
JSON as its server exports it; JSON-MIN and CSV as label_studio_sdk.converter derives them, and
checked against the converter itself where it is installed), every mistake a one-line error with
nothing written. Then the real round trip (slow): a Label Studio server on loopback, a project made
through label-studio-sdk, tasks imported, annotations submitted through the API (deliberately not
the data's labels), exports in three formats, and the loop's next cycle trained on exactly those.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET
from itertools import count
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import torch
from PIL import Image

from camssl.active import labelstudio
from camssl.active.pool import features_and_logits
from camssl.active.state import ActiveState
from camssl.augment import Augmenter
from camssl.cli import main
from camssl.config import TrainConfig, from_dict
from camssl.data import load_data
from camssl.losses import entropy
from camssl.train.checkpoint import load_run_model

TINY = ["--data", "mini", "--width", "0.125", "--epochs", "2", "optim.steps_per_epoch=3", "optim.batch_size=32",
        "threads=1", "deterministic=true", "cam_grid=false"]
QUERY = ["--strategy", "entropy", "--initial", "100", "--budget", "12", "--cycles", "1", *TINY]
LS_RUN = [*QUERY, "--oracle", "labelstudio"]


# ---------------------------------------------------------------- small helpers


def state(out: Path) -> dict:
    return json.loads((out / "active.json").read_text())


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def fails(argv: list[str], capsys, *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def truth(out: Path) -> torch.Tensor:
    """The data's labels of every training image (the simulated oracle's; not what the labeller gives)."""
    cfg = from_dict(TrainConfig, state(out)["train_config"])
    return load_data(cfg.data, seed=cfg.split.seed).train.labels


def wrong_labels(out: Path) -> dict[int, str]:
    """A labeller who never agrees with the data: image index -> a class other than the data's."""
    classes, y, index = state(out)["classes"], truth(out), state(out)["pending"]["index"]
    return {i: classes[(int(y[i]) + 1 + k % 9) % 10] for k, i in enumerate(index)}


def ann(*choices: str, cancelled: bool = False) -> dict:
    return {"choices": list(choices), "cancelled": cancelled}


# ---------------------------------------------------------------- exports written as Label Studio writes them

_ids = count(1)


def ls_json(tasks: list[dict], annotations: dict[int, list[dict]]) -> list[dict]:
    """Label Studio's JSON export of the imported ``tasks`` with ``annotations`` by camssl_index
    (the fields of Label Studio 1.23's server export; task ids in import order)."""
    items = []
    for tid, task in enumerate(tasks, start=1):
        anns = []
        for a in annotations.get(task["data"]["camssl_index"], []):
            aid = next(_ids)
            result = [{"value": {"choices": a["choices"]}, "id": f"r{aid}", "from_name": "label", "to_name": "image",
                       "type": "choices", "origin": "manual"}] if a["choices"] else []
            anns.append({"id": aid, "completed_by": 1, "result": result, "was_cancelled": a["cancelled"],
                         "ground_truth": False, "created_at": f"2026-01-01T00:00:{aid % 60:02d}.000000Z",
                         "updated_at": f"2026-01-01T00:00:{aid % 60:02d}.000000Z", "draft_created_at": None,
                         "lead_time": 2.5, "prediction": {}, "result_count": len(result), "unique_id": f"u{aid}",
                         "import_id": None, "last_action": None, "bulk_created": False, "task": tid, "project": 1,
                         "updated_by": 1, "parent_prediction": None, "parent_annotation": None,
                         "last_created_by": None})
        items.append({"id": tid, "annotations": anns, "drafts": [], "predictions": [tid], "data": task["data"],
                      "meta": {}, "created_at": "2026-01-01T00:00:00.000000Z",
                      "updated_at": "2026-01-01T00:00:00.000000Z", "allow_skip": True, "inner_id": tid,
                      "total_annotations": sum(not a["was_cancelled"] for a in anns),
                      "cancelled_annotations": sum(a["was_cancelled"] for a in anns), "total_predictions": 1,
                      "comment_count": 0, "unresolved_comment_count": 0, "last_comment_updated_at": None,
                      "project": 1, "updated_by": 1, "comment_authors": []})
    return items


def _pretty(values: list[dict]):
    """label_studio_sdk.converter.utils.prettify_result for Choices."""
    out = [v["choices"][0] if len(v["choices"]) == 1 else {"choices": v["choices"]} for v in values]
    return out[0] if len(out) == 1 else out


def min_records(items: list[dict]) -> list[dict]:
    """JSON-MIN records of a JSON export, as label_studio_sdk.converter makes them: one per submitted
    annotation (newest first), one without annotation fields for a task without annotations, none for a
    task whose annotations were all cancelled."""
    records = []
    for t in items:
        if not t["annotations"]:
            records.append({**t["data"], "id": t["id"], "annotator": None, "annotation_id": None,
                            "created_at": None, "updated_at": None, "lead_time": None})
        kept = sorted((a for a in t["annotations"] if not a["was_cancelled"]), key=lambda a: a["created_at"],
                      reverse=True)
        for a in kept:
            rec = {**t["data"], "id": t["id"]}
            values = [{"choices": r["value"]["choices"]} for r in a["result"] if r["from_name"] == "label"]
            if values:
                rec["label"] = _pretty(values)
            rec.update(annotator=a["completed_by"], annotation_id=a["id"], created_at=a["created_at"],
                       updated_at=a["updated_at"], lead_time=a["lead_time"])
            records.append(rec)
    return records


def write_export(path: Path, items: list[dict], fmt: str) -> Path:
    """``items`` (a JSON export) written in ``fmt`` as Label Studio writes it."""
    if fmt == "JSON":
        path.write_text(json.dumps(items, separators=(",", ":")))
        return path
    records = min_records(items)
    if fmt == "JSON-MIN":
        path.write_text("[\n" + ",\n".join(json.dumps(r, indent=2, ensure_ascii=False) for r in records) + "\n]")
        return path
    keys = {"annotator", "annotation_id", "created_at", "updated_at", "lead_time"}.union(*records)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=sorted(keys), quoting=csv.QUOTE_NONNUMERIC)
    writer.writeheader()
    for r in records:
        row = {k: (json.dumps(v, ensure_ascii=False, separators=(",", ":")) if isinstance(v, dict | list) else v)
               for k, v in r.items()}
        row["annotator"] = "" if r["annotator"] is None else str(r["annotator"])
        writer.writerow(row)
    path.write_text(buf.getvalue())
    return path


# ---------------------------------------------------------------- a run waiting for Label Studio


@pytest.fixture(scope="module")
def paused(tmp_path_factory) -> tuple[Path, str]:
    """A Label Studio run after its first query (never changed by a test: copy it first)."""
    out = tmp_path_factory.mktemp("ls") / "run"
    buf = io.StringIO()
    from contextlib import redirect_stdout

    with redirect_stdout(buf):
        assert main(["active", "--out", str(out), *LS_RUN]) == 0
    return out, buf.getvalue()


def tasks_of(out: Path) -> list[dict]:
    return json.loads(labelstudio.tasks_path(out, 1).read_text())


def test_the_tasks_file_carries_the_image_the_models_prediction_and_the_acquisition(paused):
    out, printed = paused
    s = state(out)
    pending, classes = s["pending"], s["classes"]
    assert pending["tasks"] == "queries/cycle_1.labelstudio.json" and not (out / "queries" / "cycle_1.csv").exists()
    assert f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={out.resolve()}" in printed and "--labels EXPORT" in printed
    tasks = tasks_of(out)
    cfg = from_dict(TrainConfig, s["train_config"])
    data = load_data(cfg.data, seed=cfg.split.seed)
    index = pending["index"]
    model = load_run_model(out / "cycle_0", "last")[0]
    _, logits = features_and_logits(model, data.train.images[index], Augmenter(cfg.augment))
    assert [t["data"]["camssl_index"] for t in tasks] == index and len(tasks) == 12
    for rank, (task, i, lg) in enumerate(zip(tasks, index, logits, strict=True), start=1):
        d = task["data"]
        assert set(task) == {"data", "predictions"}
        assert set(d) == {"image", "camssl_index", "camssl_cycle", "strategy", "acquisition_score", "acquisition_rank"}
        assert d["camssl_cycle"] == 1 and d["strategy"] == "entropy" and d["acquisition_rank"] == rank
        assert d["acquisition_score"] == pytest.approx(float(entropy(lg[None])[0]), abs=1e-5)
        url = urlparse(d["image"])
        assert url.path == "/data/local-files/" and parse_qs(url.query)["d"] == [f"queries/cycle_1/{i:06d}.png"]
        png = torch.from_numpy(__import__("numpy").array(Image.open(out / parse_qs(url.query)["d"][0]))).permute(2, 0, 1)
        assert torch.equal(png, data.train.images[i])  # the very training image, losslessly
        [pred] = task["predictions"]
        assert pred == {"model_version": "camssl cycle_0", "score": pytest.approx(float(lg.softmax(0).max()), abs=1e-6),
                        "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                    "value": {"choices": [classes[int(lg.argmax())]]}}]}
    scores = [t["data"]["acquisition_score"] for t in tasks]
    assert scores == sorted(scores, reverse=True)  # rank 1: the strategy's first choice


def test_the_labelling_config_is_one_image_and_one_choice_among_the_classes(paused):
    out, _ = paused
    view = ET.fromstring((out / "queries" / "labelstudio.xml").read_text())
    image, choices = list(view)
    assert view.tag == "View" and image.tag == "Image" and image.attrib == {"name": "image", "value": "$image"}
    assert choices.tag == "Choices" and choices.attrib["name"] == "label" and choices.attrib["toName"] == "image"
    assert choices.attrib["choice"] == "single" and choices.attrib["required"] == "true"
    assert [c.attrib["value"] for c in choices] == state(out)["classes"]
    odd = ["a & b", 'say "hi"', "<x>", "l'eau"]
    assert [c.attrib["value"] for c in ET.fromstring(labelstudio.label_config(odd))[1]] == odd


@pytest.mark.parametrize("fmt", ["JSON", "JSON-MIN", "CSV"])
def test_each_export_format_gives_the_labellers_labels(paused, fmt, tmp_path):
    out, _ = paused
    st = ActiveState.load(out)
    given = wrong_labels(out)
    index = st.pending["index"]
    anns = {i: [ann(c)] for i, c in given.items()}
    anns[index[0]] = [ann(cancelled=True), ann(given[index[0]])]  # skipped once, then labelled: the label counts
    anns[index[1]] = [ann(f"  {given[index[1]].upper()} ")]  # case and spaces, as the files oracle accepts them
    path = write_export(tmp_path / "export", ls_json(tasks_of(out), anns), fmt)
    labels = labelstudio.read_export(path, st, "camssl active --out X --resume --labels EXPORT")
    assert [st.classes[y] for y in labels] == [given[i] for i in index]
    assert labelstudio.parse_export(path)[0] == fmt


def test_the_writers_here_match_label_studios_own_converter(paused, tmp_path):
    converter = pytest.importorskip("label_studio_sdk.converter")
    out, _ = paused
    index = state(out)["pending"]["index"]
    anns = {i: [ann("cat")] for i in index}
    anns[index[0]] = [ann("dog", "cat")]  # two classes in one annotation
    anns[index[1]] = []  # not labelled
    anns[index[2]] = [ann(cancelled=True)]  # skipped
    anns[index[3]] = [ann("dog"), ann("cat")]  # labelled twice
    src = write_export(tmp_path / "export.json", ls_json(tasks_of(out), anns), "JSON")
    c = converter.Converter(config=(out / "queries" / "labelstudio.xml").read_text(), project_dir=None)
    c.convert_to_json_min(str(src), str(tmp_path / "min"), is_dir=False)
    c.convert_to_csv(str(src), str(tmp_path / "csv"), is_dir=False, sep=",")
    ours = write_export(tmp_path / "ours.json", json.loads(src.read_text()), "JSON-MIN")
    assert json.loads((tmp_path / "min" / "result.json").read_text()) == json.loads(ours.read_text())
    ours = write_export(tmp_path / "ours.csv", json.loads(src.read_text()), "CSV")
    theirs = (tmp_path / "csv" / "result.csv").read_text()
    assert list(csv.DictReader(io.StringIO(theirs))) == list(csv.DictReader(io.StringIO(ours.read_text())))


def _mistake(kind: str, tasks: list[dict], given: dict[int, str]) -> tuple[list[dict], dict[int, list[dict]]]:
    """An export with one mistake: (the tasks Label Studio holds, the annotations by camssl_index)."""
    tasks = json.loads(json.dumps(tasks))
    anns = {i: [ann(c)] for i, c in given.items()}
    first, second = tasks[0]["data"]["camssl_index"], tasks[1]["data"]["camssl_index"]
    if kind == "foreign task":
        tasks.append({"data": {"image": "/data/local-files/?d=x.png", "camssl_index": None}})
    elif kind == "image not queried":
        tasks.append({"data": {**tasks[0]["data"], "camssl_index": 5}})
        anns[5] = [ann("cat")]
    elif kind == "other cycle":
        tasks[0]["data"]["camssl_cycle"] = 2
    elif kind == "no annotation":
        anns[first] = []
    elif kind == "task left out":
        tasks = tasks[1:]
    elif kind == "two annotations":
        anns[first] = [ann("cat"), ann("dog")]
    elif kind == "imported twice":
        tasks.append(tasks[1])
    elif kind == "unknown class":
        anns[second] = [ann("unicorn")]
    elif kind == "two classes":
        anns[first] = [ann("cat", "dog")]
    elif kind == "skipped":
        anns[first] = [ann(cancelled=True)]
    return tasks, anns


@pytest.mark.parametrize("kind, fmt, needles", [
    ("foreign task", "CSV", ["unknown task 13", "no camssl_index/camssl_cycle"]),
    ("image not queried", "JSON", ["unknown task 13 (000005.png)", "not one of the 12 images queried for cycle 1"]),
    ("other cycle", "JSON-MIN", ["unknown task 1 (", "its camssl_cycle is 2"]),
    ("no annotation", "JSON", ["task 1 (", "has no annotation; label it"]),
    ("no annotation", "CSV", ["task 1 (", "has no annotation; label it"]),
    ("task left out", "JSON-MIN", ["1 of the 12 queried images have no task", "acquisition rank 1"]),
    ("two annotations", "JSON", ["task 1 (", "has 2 annotations (cat; dog)", "keep one"]),
    ("two annotations", "JSON-MIN", ["task 1 (", "has 2 annotations"]),
    ("imported twice", "CSV", ["is in two tasks (2 and 13)", "imported twice"]),
    ("unknown class", "CSV", ["task 2 (", "unknown class 'unicorn'", "valid classes: airplane", "export again"]),
    ("two classes", "JSON-MIN", ["task 1 (", "chooses 2 classes (cat, dog); choose exactly one"]),
    ("skipped", "JSON", ["task 1 (", "was skipped (cancelled) in Label Studio"]),
    ("skipped", "CSV", ["1 of the 12 queried images have no task", "leave out skipped tasks"]),
])
def test_every_mistake_is_one_line_naming_the_task_and_nothing_is_written(paused, kind, fmt, needles, tmp_path,
                                                                          capsys):
    out, _ = paused
    before = snapshot(out)
    tasks, anns = _mistake(kind, tasks_of(out), wrong_labels(out))
    path = write_export(tmp_path / "export", ls_json(tasks, anns), fmt)
    err = fails(["active", "--out", str(out), "--resume", "--labels", str(path)], capsys, *needles)
    assert f"({fmt})" in err and f"camssl active --out {out} --resume" in err
    assert snapshot(out) == before


def test_files_that_are_no_export_and_misused_flags(paused, tmp_path, capsys):
    out, _ = paused
    before = snapshot(out)
    resume = ["active", "--out", str(out), "--resume"]
    fails(resume, capsys, "waits for its labels from Label Studio", "--resume --labels EXPORT")
    fails([*resume, "--labels", str(labelstudio.tasks_path(out, 1))], capsys, "item 1 has no task id",
          "camssl's tasks file is not an export")
    (tmp_path / "d.json").write_text('{"id": 1}')
    fails([*resume, "--labels", str(tmp_path / "d.json")], capsys, "is not a Label Studio export", "lists of tasks")
    (tmp_path / "bad.json").write_text('[{"id": 1,')
    fails([*resume, "--labels", str(tmp_path / "bad.json")], capsys, "invalid JSON")
    fails([*resume, "--labels", str(tmp_path / "none.csv")], capsys, "export", "is missing")
    fails(["active", "--out", str(tmp_path / "new"), *LS_RUN, "--labels", "x.json"], capsys, "--labels needs --resume")
    assert not (tmp_path / "new").exists() and snapshot(out) == before
    fails(["active", "--out", str(tmp_path / "o"), *QUERY, "--oracle", "bogus"], capsys,
          "allowed values: simulated, files, labelstudio")


def test_resume_with_labels_trains_the_next_cycle_on_them(paused, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(paused[0], out)
    given = wrong_labels(out)
    path = write_export(tmp_path / "export.csv", ls_json(tasks_of(out), {i: [ann(c)] for i, c in given.items()}), "CSV")
    assert main(["active", "--out", str(out), "--resume", "--labels", str(path)]) == 0
    s = state(out)
    assert s["finished"] and s["pending"] is None and s["labeled"]["cycle"][100:] == [1] * 12
    stored = dict(zip(s["labeled"]["index"][100:], s["labeled"]["label"][100:], strict=True))
    assert {i: s["classes"][y] for i, y in stored.items()} == given
    y = truth(out)
    assert all(int(y[i]) != s["classes"].index(c) for i, c in given.items())  # not the data's labels
    split = json.loads((out / "cycle_1" / "split.json").read_text())
    counts = torch.bincount(torch.tensor(s["labeled"]["label"]), minlength=10)
    assert split["counts"]["labeled"] == counts.tolist()  # cycle 1 trained on them
    assert s["cycles"][0]["query"]["class_histogram"] == torch.bincount(torch.tensor(list(stored.values())),
                                                                        minlength=10).tolist()
    capsys.readouterr()
    fails(["active", "--out", str(out), "--resume", "--labels", str(path)], capsys, "no query waiting for labels",
          "the run is finished")
    fails(["active-export", str(out)], capsys, "nothing to export", "the run is finished")


def test_tasks_of_earlier_queries_in_the_same_project_are_ignored(paused, tmp_path):
    out, _ = paused
    st = ActiveState.load(out)
    index = st.pending["index"]
    earlier = [i for i in range(2000) if i not in set(st.labeled["index"]) | set(index) | set(st.val)][:3]
    st.labeled = {"index": [*st.labeled["index"], *earlier], "label": [*st.labeled["label"], 1, 2, 3],
                  "cycle": [*st.labeled["cycle"], 1, 1, 1], "strategy": [*st.labeled["strategy"], *["entropy"] * 3]}
    st.pending = {**st.pending, "cycle": 2}
    tasks = [{"data": {**t["data"], "camssl_cycle": 2}} for t in tasks_of(out)]
    old = [{"data": {"image": "x", "camssl_index": i, "camssl_cycle": 1}} for i in earlier]
    anns = {i: [ann("cat")] for i in [*index, *earlier]}
    path = write_export(tmp_path / "e.json", ls_json([*old, *tasks], anns), "JSON-MIN")
    assert labelstudio.read_export(path, st, "x") == [st.classes.index("cat")] * 12
    old[0]["data"]["camssl_cycle"] = 0  # an image this run labelled in another cycle: not from this run's query
    path = write_export(tmp_path / "e.json", ls_json([*old, *tasks], anns), "JSON-MIN")
    with pytest.raises(ValueError, match=r"unknown task 1 .*\(its camssl_cycle is 0\)"):
        labelstudio.read_export(path, st, "x")


def test_active_export_turns_a_files_oracle_query_into_tasks(tmp_path, capsys):
    out = tmp_path / "files"
    assert main(["active", "--out", str(out), *QUERY, "--oracle", "files"]) == 0
    shutil.rmtree(out / "queries" / "cycle_1")  # the PNGs are written again from the data when missing
    capsys.readouterr()
    before = snapshot(out)
    fails(["active-export", str(out), "--root", str(out / "cycle_0")], capsys, "does not hold", "DOCUMENT_ROOT")
    fails(["active-export", str(tmp_path / "nothing")], capsys, "holds no active-learning run")
    assert snapshot(out) == before
    assert main(["active-export", str(out), "--format", "labelstudio", "--root", str(tmp_path)]) == 0
    assert f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={tmp_path.resolve()}" in capsys.readouterr().out
    tasks = tasks_of(out)
    index = state(out)["pending"]["index"]
    assert [t["data"]["image"] for t in tasks] == [f"/data/local-files/?d=files/queries/cycle_1/{i:06d}.png"
                                                   for i in index]
    assert all((out / "queries" / "cycle_1" / f"{i:06d}.png").exists() for i in index)
    given = wrong_labels(out)
    path = write_export(tmp_path / "e.json", ls_json(tasks, {i: [ann(c)] for i, c in given.items()}), "JSON")
    assert main(["active", "--out", str(out), "--resume", "--labels", str(path)]) == 0
    s = state(out)
    assert s["finished"] and {i: s["classes"][y] for i, y in zip(s["labeled"]["index"][100:],
                                                                  s["labeled"]["label"][100:])} == given


# ---------------------------------------------------------------- a real Label Studio

TOKEN = "camssl0test0token0123456789"
LS_ENV = {
    "DJANGO_DB": "sqlite",  # a SQLite database in LABEL_STUDIO_BASE_DATA_DIR, not PostgreSQL
    "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false",  # no version check, no analytics
    "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",  # no error reports
    "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true", "LABEL_STUDIO_HOST": "", "OMP_NUM_THREADS": "1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabelStudioServer:
    """``label-studio start`` on loopback with its own data folder; stopped by :meth:`stop` (bounded waits)."""

    def __init__(self, folder: Path, document_root: Path) -> None:
        self.port, self.log = _free_port(), folder / "label-studio.log"
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **LS_ENV, "LABEL_STUDIO_BASE_DATA_DIR": str(folder / "data"),
               "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root.resolve())}
        cmd = [sys.executable, "-m", "label_studio.server", "start", "--no-browser", "--internal-host", "127.0.0.1",
               "--port", str(self.port), "--username", "labeller@example.com", "--password", "camssl-test",
               "--user-token", TOKEN, "--enable-legacy-api-token", "--log-level", "WARNING"]
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.started = time.monotonic()

    def wait(self, timeout: float = 420) -> float:
        """Seconds from the start until /health answered."""
        while time.monotonic() - self.started < timeout:
            assert self.proc.poll() is None, f"Label Studio exited: {self.log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                    if r.status == 200:
                        return time.monotonic() - self.started
            except OSError:
                time.sleep(1)
        raise AssertionError(f"Label Studio did not answer in {timeout}s: {self.log.read_text()[-3000:]}")

    def get(self, path: str) -> bytes:
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Token {TOKEN}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read()

    def stop(self) -> None:
        for sig, wait in ((signal.SIGINT, 30), (signal.SIGKILL, 30)):
            if self.proc.poll() is not None:
                break
            os.killpg(self.proc.pid, sig)  # its own session: the server and anything it started
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        assert self.proc.poll() is not None


def _export(ls, project: int, fmt: str, path: Path) -> Path:
    path.write_bytes(b"".join(ls.projects.exports.download_sync(project, export_type=fmt, download_all_tasks=True)))
    return path


def _choice(label: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


@pytest.mark.slow
def test_round_trip_through_a_real_label_studio(tmp_path, capsys, record_property):
    pytest.importorskip("label_studio", reason="install the test extra: pip install -e '.[test]'")
    sdk = pytest.importorskip("label_studio_sdk", reason="install the test extra: pip install -e '.[test]'")
    out = tmp_path / "run"
    server = LabelStudioServer(tmp_path, document_root=out)  # starts while cycle 0 trains
    try:
        assert main(["active", "--out", str(out), *LS_RUN]) == 0
        record_property("label_studio_start_s", round(server.wait()))  # in --junitxml
        capsys.readouterr()
        _labelling_session(sdk.LabelStudio(base_url=server.url, api_key=TOKEN), server, out, tmp_path, capsys)
    finally:
        server.stop()


def _labelling_session(ls, server: LabelStudioServer, out: Path, tmp_path: Path, capsys) -> None:
    given = wrong_labels(out)
    project = ls.projects.create(title="camssl query", label_config=(out / "queries" / "labelstudio.xml").read_text())
    ls.import_storage.local.create(project=project.id, path=str((out / "queries").resolve()), title="camssl")
    imported = ls.projects.import_tasks(id=project.id, request=tasks_of(out), return_task_ids=True)
    assert imported.task_count == 12 and imported.prediction_count == 12
    tasks = list(ls.tasks.list(project=project.id))
    first = tasks[0]
    path = parse_qs(urlparse(first.data["image"]).query)["d"][0]
    assert server.get(first.data["image"]) == (out / path).read_bytes()  # Label Studio serves the PNG
    for t in tasks[1:]:
        ls.annotations.create(id=t.id, result=_choice(given[t.data["camssl_index"]]), lead_time=3.0)
    ls.annotations.create(id=first.id, result=[], was_cancelled=True)  # the labeller skips the first task
    before = snapshot(out)
    resume = ["active", "--out", str(out), "--resume", "--labels"]
    fails([*resume, str(_export(ls, project.id, "JSON", tmp_path / "a.json"))], capsys,
          f"task {first.id} (", "was skipped (cancelled)")
    fails([*resume, str(_export(ls, project.id, "CSV", tmp_path / "a.csv"))], capsys,
          "1 of the 12 queried images have no task", "leave out skipped tasks")
    ls.annotations.create(id=first.id, result=_choice(given[first.data["camssl_index"]]), lead_time=3.0)
    extra = ls.annotations.create(id=tasks[1].id, result=_choice("cat"), lead_time=1.0)  # a second opinion
    fails([*resume, str(_export(ls, project.id, "JSON_MIN", tmp_path / "b.json"))], capsys,
          f"task {tasks[1].id} (", "has 2 annotations")
    assert snapshot(out) == before
    ls.annotations.delete(id=extra.id)
    st = ActiveState.load(out)
    index = st.pending["index"]
    for fmt in ("JSON", "JSON_MIN", "CSV"):
        export = _export(ls, project.id, fmt, tmp_path / f"final.{fmt}")
        assert [st.classes[y] for y in labelstudio.read_export(export, st, "x")] == [given[i] for i in index], fmt
    assert main([*resume, str(tmp_path / "final.JSON")]) == 0
    s = state(out)
    assert s["finished"] and s["labeled"]["cycle"][100:] == [1] * 12
    assert {i: s["classes"][y] for i, y in zip(s["labeled"]["index"][100:], s["labeled"]["label"][100:])} == given
    split = json.loads((out / "cycle_1" / "split.json").read_text())
    assert split["counts"]["labeled"] == torch.bincount(torch.tensor(s["labeled"]["label"]), minlength=10).tolist()
