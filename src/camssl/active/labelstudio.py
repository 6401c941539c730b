"""The Label Studio oracle: a query as Label Studio tasks, and Label Studio's exports read back as labels.

After a query, ``camssl active --oracle labelstudio`` (or ``camssl active-export OUT
--format labelstudio`` for any run's pending query) writes, next to the queried PNGs
``OUT/queries/cycle_<c>/``:

- ``OUT/queries/cycle_<c>.labelstudio.json``: one task per queried image; its ``data`` holds
  the image (served by Label Studio's local-files storage, ``/data/local-files/?d=<path
  relative to the document root>``), ``camssl_index`` and ``camssl_cycle`` (how the task is
  matched when its labels come back), the strategy and its ``acquisition_score`` and
  ``acquisition_rank`` (1: the strategy's first choice); its ``predictions`` hold the task
  model's class and probability as a pre-annotation;
- ``OUT/queries/labelstudio.xml``: the labelling config (one ``Image``, one single-choice
  ``Choices`` named ``label`` over the class names).

``camssl active --out OUT --resume --labels EXPORT`` reads Label Studio's export of the
project in its JSON, JSON-MIN or CSV format (found from the content) and checks it as a
whole before any label is used: every task made by camssl for this query (tasks of this
run's earlier queries are ignored, any other task is refused), each queried image in one
task, each task with exactly one annotation (a skipped task and a task labelled twice are
refused) choosing exactly one class of the data. Each mistake is a one-line error naming
the task. The three formats give the same labels for the same project: JSON's cancelled
annotations are ignored beside a submitted one, as JSON-MIN and CSV leave them out.
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from torch import Tensor

from camssl import io
from camssl.active.oracle import match_class, query_name, query_paths, write_images
from camssl.active.state import ActiveState
from camssl.errors import UserError

FROM_NAME, TO_NAME = "label", "image"  # the Choices and the Image tag of the labelling config
CONFIG_NAME = "labelstudio.xml"
FORMATS = "JSON, JSON-MIN or CSV"
# what JSON-MIN and CSV add to a task's data fields (label_studio_sdk.converter)
_MIN_KEYS = {"id", FROM_NAME, "annotator", "annotation_id", "created_at", "updated_at", "lead_time", "agreement",
             "history", f"{FROM_NAME}_transcript"}


# ---------------------------------------------------------------- the query as tasks


def tasks_path(out: Path, cycle: int) -> Path:
    """The Label Studio tasks file of the query that labels cycle ``cycle``."""
    return out / "queries" / f"cycle_{cycle}.labelstudio.json"


def label_config(classes: Sequence[str]) -> str:
    """Label Studio's labelling config: the image and one required, single choice among ``classes``."""
    choices = "".join(f"<Choice value={quoteattr(c)}/>" for c in classes)
    return (f'<View><Image name="{TO_NAME}" value="${TO_NAME}"/><Choices name="{FROM_NAME}" toName="{TO_NAME}" '
            f'choice="single" showInline="true" required="true">{choices}</Choices></View>\n')


def image_url(path: Path, root: Path) -> str:
    """The URL under which Label Studio's local-files storage serves ``path`` (below the document root ``root``)."""
    return "/data/local-files/?d=" + quote(path.resolve().relative_to(root.resolve()).as_posix())


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def make_tasks(pending: dict[str, Any], classes: Sequence[str], strategy: str, folder: Path,
               root: Path) -> list[dict[str, Any]]:
    """Label Studio tasks of the ``pending`` query (its images in ``folder``, served below ``root``)."""
    cycle, index = pending["cycle"], pending["index"]
    scores = pending.get("score") or [None] * len(index)
    predicted, prob = pending.get("predicted"), pending.get("prob")
    tasks = []
    for rank, (i, score) in enumerate(zip(index, scores, strict=True), start=1):
        task: dict[str, Any] = {"data": {
            TO_NAME: image_url(folder / query_name(i), root), "camssl_index": i, "camssl_cycle": cycle,
            "strategy": strategy, "acquisition_score": _finite(score), "acquisition_rank": rank}}
        if predicted is not None and prob is not None:
            k = rank - 1
            task["predictions"] = [{
                "model_version": f"camssl cycle_{cycle - 1}", "score": _finite(prob[k]),
                "result": [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
                            "value": {"choices": [classes[predicted[k]]]}}]}]
        tasks.append(task)
    return tasks


def check_root(out: Path, root: Path) -> Path:
    """``root`` resolved, after checking that it holds ``out`` (Label Studio serves files below it only)."""
    if not root.is_dir():
        raise UserError(f"--root '{root}' is not a folder; give the folder Label Studio serves files from "
                        "(LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT), one that holds the active-learning folder")
    if not out.resolve().is_relative_to(root.resolve()):
        raise UserError(f"--root '{root}' does not hold '{out}': Label Studio serves only files below its "
                        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT; give a folder that holds the active-learning folder")
    return root.resolve()


def write_query(out: Path, state: ActiveState, strategy: str, images: Tensor | None,
                root: Path | None = None) -> tuple[Path, Path]:
    """Write the pending query's PNGs (those missing; ``images``: every training image, uint8 N×3×H×W), its
    tasks file and the labelling config; returns (tasks file, labelling config). ``root``: the folder Label
    Studio serves files from (default ``out``)."""
    pending = state.pending
    assert pending is not None
    root = check_root(out, out if root is None else root)
    cycle, index = pending["cycle"], pending["index"]
    folder = query_paths(out, cycle)[1]
    if any(not (folder / query_name(i)).exists() for i in index):
        assert images is not None, "the query's images are missing and no images were given"
        write_images(out, cycle, index, images)
    tasks = make_tasks(pending, state.classes, strategy, folder, root)
    path, config = tasks_path(out, cycle), out / "queries" / CONFIG_NAME
    io.write_text(config, label_config(state.classes))
    io.write_text(path, json.dumps(tasks, indent=1) + "\n")
    return path, config


def instructions(out: Path, cycle: int, root: Path | None = None) -> str:
    """What to do with the tasks file of the query for cycle ``cycle`` (printed after writing it)."""
    root = (out if root is None else root).resolve()
    tasks = tasks_path(out, cycle)
    return (f"wrote {tasks}: {len(json.loads(tasks.read_text()))} Label Studio tasks (the images are in "
            f"{query_paths(out, cycle)[1]}/, the labelling config in {out / 'queries' / CONFIG_NAME}). Start Label Studio "
            f"with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root}, "
            f"create a project with that labelling config, add a Local files source storage with the path "
            f"{(out / 'queries').resolve()} (do not sync it), import the tasks file, label the tasks, export the "
            f"project ({FORMATS}), then run: camssl active --out {out} --resume --labels EXPORT "
            "(docs/labelstudio.md)")


# ---------------------------------------------------------------- exports read back


@dataclass
class _Task:
    """A task of an export: its data fields and its annotations as (cancelled, chosen classes)."""

    data: dict[str, Any]
    annotations: list[tuple[bool, list[str]]] = field(default_factory=list)


def _choices(value: Any) -> list[str]:
    """The classes chosen in a JSON-MIN/CSV ``label`` value: "cat", {"choices": [...]} or a list of those."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [str(c) for c in value.get("choices") or []]
    if isinstance(value, list):
        return [c for v in value for c in _choices(v)]
    return []


def _from_json(items: list[dict[str, Any]]) -> dict[str, _Task]:
    """Label Studio's JSON export: one item per task with its ``annotations``."""
    tasks: dict[str, _Task] = {}
    for item in items:
        task = tasks.setdefault(str(item["id"]), _Task(dict(item.get("data") or {})))
        for a in item.get("annotations") or []:
            chosen = [str(c) for r in a.get("result") or [] if r.get("from_name") == FROM_NAME
                      for c in (r.get("value") or {}).get("choices") or []]
            task.annotations.append((bool(a.get("was_cancelled") or a.get("skipped")), chosen))
    return tasks


def _from_rows(rows: list[dict[str, Any]], csv_values: bool) -> dict[str, _Task]:
    """JSON-MIN or CSV: one row per submitted annotation (a row without annotation_id: a task without one)."""
    tasks: dict[str, _Task] = {}
    for row in rows:
        data = {k: v for k, v in row.items() if k not in _MIN_KEYS}
        task = tasks.setdefault(str(row["id"]), _Task(data))
        if row.get("annotation_id") in (None, ""):
            continue
        value = row.get(FROM_NAME)
        if csv_values and isinstance(value, str) and value.startswith(("[", "{")):  # CSV: JSON of a list/dict
            try:
                value = json.loads(value)
            except ValueError:
                pass
        task.annotations.append((False, _choices(value) if value not in (None, "") else []))
    return tasks


def parse_export(path: Path) -> tuple[str, dict[str, _Task]]:
    """(format, tasks by task id) of a Label Studio export; :class:`UserError` for anything else."""
    what = f"'{path}' is not a Label Studio export ({FORMATS})"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"the Label Studio export '{path}' is missing; give the file Label Studio's Export wrote "
                        f"({FORMATS})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{what}: it cannot be read as UTF-8 text ({type(e).__name__})") from None
    if text.lstrip()[:1] in ("[", "{"):
        try:
            items = json.loads(text)
        except ValueError as e:
            raise UserError(f"{what}: invalid JSON ({e})") from None
        if not isinstance(items, list) or not all(isinstance(t, dict) for t in items):
            raise UserError(f"{what}: Label Studio's JSON exports are lists of tasks")
        fmt = "JSON" if any("annotations" in t for t in items) else "JSON-MIN"
    else:
        items = list(csv.DictReader(_stdio.StringIO(text)))
        fmt = "CSV"
    bad = next((k for k, t in enumerate(items, start=1) if t.get("id") in (None, "")), None)
    if bad is not None:
        raise UserError(f"{what}: {'row' if fmt == 'CSV' else 'item'} {bad} has no task id (camssl's tasks file "
                        "is not an export: label the tasks in Label Studio and give the file its Export wrote)")
    return fmt, (_from_json(items) if fmt == "JSON" else _from_rows(items, fmt == "CSV"))


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _label_of(task: _Task, name: str, classes: Sequence[str], where: str, fix: str) -> int:
    """The class id of a task's one submitted annotation."""
    done = [chosen for cancelled, chosen in task.annotations if not cancelled]
    if not done and task.annotations:
        raise UserError(f"{where}: {name} was skipped (cancelled) in Label Studio; label it, {fix}")
    if not done:
        raise UserError(f"{where}: {name} has no annotation; label it, {fix}")
    if len(done) > 1:
        given = "; ".join(", ".join(c) or "no class" for c in done)
        raise UserError(f"{where}: {name} has {len(done)} annotations ({given}); keep one (delete the others in "
                        f"Label Studio), {fix}")
    if len(done[0]) != 1:
        chosen = f"{len(done[0])} classes ({', '.join(done[0])})" if done[0] else "no class"
        raise UserError(f"{where}: {name}'s annotation chooses {chosen}; choose exactly one, {fix}")
    try:
        return match_class(done[0][0], classes, where, name)
    except UserError as e:
        raise UserError(f"{e}; {fix}") from None


def read_export(path: Path, state: ActiveState, resume: str) -> list[int]:
    """The labels (class ids, in the order of the pending query) of a Label Studio export, checked as a whole.

    ``resume``: the command the messages tell the person to run next.
    """
    pending = state.pending
    assert pending is not None
    cycle, index = pending["cycle"], pending["index"]
    fmt, tasks = parse_export(path)
    where = f"Label Studio export '{path}' ({fmt})"
    fix = f"export again and run {resume}"
    position = {i: k for k, i in enumerate(index)}
    earlier = dict(zip(state.labeled["index"], state.labeled["cycle"], strict=True))
    labels, owner = [-1] * len(index), {}
    for tid, task in tasks.items():
        i, c = _int(task.data.get("camssl_index")), _int(task.data.get("camssl_cycle"))
        name = f"task {tid}" + ("" if i is None else f" ({query_name(i)})")
        if i is None or c is None:
            raise UserError(f"{where}: unknown {name}: it has no camssl_index/camssl_cycle data (camssl did not make "
                            f"it); delete it in Label Studio or export only camssl's tasks, {fix}")
        if c < cycle and earlier.get(i) == c:
            continue  # a task of this run's earlier query, labelled then
        if c != cycle or i not in position:
            raise UserError(f"{where}: unknown {name}: it is not one of the {len(index)} images queried for cycle "
                            f"{cycle} (its camssl_cycle is {c}); delete it in Label Studio, {fix}")
        if i in owner:
            raise UserError(f"{where}: {query_name(i)} is in two tasks ({owner[i]} and {tid}): the tasks were imported "
                            f"twice; delete one of them in Label Studio, {fix}")
        owner[i] = tid
        labels[position[i]] = _label_of(task, name, state.classes, where, fix)
    missing = [k for k, y in enumerate(labels) if y == -1]
    if missing:
        k = missing[0]
        raise UserError(f"{where}: {len(missing)} of the {len(index)} queried images have no task in the export "
                        f"(first: {query_name(index[k])}, acquisition rank {k + 1}); JSON-MIN and CSV exports leave "
                        f"out skipped tasks and tasks without annotations: label them, {fix}")
    return labels


def labels_for_pending(path: Path, state: ActiveState, oracle: str, out: Path) -> list[int]:
    """The pending query's labels from the Label Studio export ``path`` (``--labels``), checked before anything runs."""
    if state.pending is None:
        raise UserError(f"--labels: '{out}' has no query waiting for labels "
                        f"({'the run is finished' if state.finished else 'the loop has not queried yet'}); "
                        f"run camssl active --out {out} --resume without --labels")
    if oracle == "simulated":
        raise UserError(f"--labels: '{out}' uses the simulated oracle (the data's labels); "
                        f"run camssl active --out {out} --resume without --labels")
    return read_export(Path(path), state, f"camssl active --out {out} --resume --labels EXPORT")
