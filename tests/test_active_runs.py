"""``camssl active`` as a whole, on the embedded mini set with tiny models: the command line (REVIVAL,
2 cycles), exact resume after SIGKILL mid-cycle and after interruptions between the loop's steps, the
files oracle round trip, the bad-input errors, ``camssl active-table`` and the fixed-feature script."""

from __future__ import annotations

import csv
import json
import os
import runpy
import signal
import sys
from pathlib import Path

import pytest
import torch

from camssl.active.loop import _Loop
from camssl.active.state import comparable
from camssl.cli import main
from camssl.data import Split
from conftest import SCRIPTS, TINY_ACTIVE, Background, fails, finish, launch, snapshot, wait_for_file

REVIVAL = ["--strategy", "revival", "--initial", "100", "--budget", "50", "--cycles", "2", *TINY_ACTIVE]


def state(out: Path) -> dict:
    return json.loads((out / "active.json").read_text())


@pytest.fixture(scope="module")
def revival_started(tmp_path_factory):
    """``camssl active`` with REVIVAL, 2 cycles, in its own process: (its directory, the running process)."""
    out = tmp_path_factory.mktemp("al") / "revival"
    started = Background(1, "active", "--out", str(out), *REVIVAL)
    yield out, started
    started.stop()


@pytest.fixture
def revival_run(revival_started) -> tuple[Path, str]:
    """The finished REVIVAL run: (its directory, what it printed)."""
    out, started = revival_started
    return out, started.wait()


# first in the file: the uninterrupted run it is compared with trains beside it
def test_sigkill_mid_cycle_resumes_to_the_same_active_json(revival_started, tmp_path):
    out = tmp_path / "killed"
    proc = launch(1, "active", "--out", str(out), *REVIVAL)
    wait_for_file(out / "cycle_1" / "last.pt", proc)  # cycle 1 has finished its first of two epochs
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not state(out)["finished"] and not (out / "cycle_1" / "result.json").exists()
    printed = finish(launch(1, "active", "--out", str(out), "--resume"))
    assert "resumed from" in printed
    full, started = revival_started
    started.wait()
    assert comparable(state(out)) == comparable(state(full))


def test_revival_from_the_command_line_two_cycles(revival_run):
    out, printed = revival_run
    s = state(out)
    assert s["finished"] and s["pending"] is None and [c["n_labeled"] for c in s["cycles"]] == [100, 150, 200]
    assert "cycle  labels  test acc" in printed and "queried 50 images with revival" in printed
    val = set(s["val"])
    labeled = s["labeled"]
    assert len(labeled["index"]) == len(set(labeled["index"])) == 200 and not val & set(labeled["index"])
    assert labeled["strategy"] == ["initial"] * 100 + ["revival"] * 100
    assert labeled["cycle"] == [0] * 100 + [1] * 50 + [2] * 50
    before = set(labeled["index"][:100])
    for c in (0, 1):
        query = s["cycles"][c]["query"]
        q = query["index"]
        assert len(q) == len(set(q)) == 50 and not set(q) & (before | val)  # unique, new, never validation
        assert sum(query["class_histogram"]) == 50 and 0 <= query["virtual_acc_before"] <= 1
        assert set(s["cycles"][c]["time"]) == {"train_s", "features_s", "select_s", "diagnostics_s"}
        before |= set(q)
    for c in range(3):  # each cycle an ordinary run: its split is the labeled set so far, validation fixed
        split = Split.load(out / f"cycle_{c}" / "split.json")
        want = sorted(i for i, k in zip(labeled["index"], labeled["cycle"]) if k <= c)
        assert split.labeled.tolist() == want and split.val.tolist() == s["val"]
        assert len(split.unlabeled) == 2000 - len(want) and not set(split.unlabeled.tolist()) & set(want)
        result = json.loads((out / f"cycle_{c}" / "result.json").read_text())
        assert result["steps"] == 6 and s["cycles"][c]["test_acc"] == result["test_acc"]


def test_interruptions_between_the_loops_steps_resume_exactly(tmp_path, monkeypatch, capsys, request):
    args = ["--strategy", "coreset", "--initial", "100", "--budget", "40", "--cycles", "1", *TINY_ACTIVE]
    full = Background(1, "active", "--out", str(tmp_path / "full"), *args)  # runs beside the interrupted one
    request.addfinalizer(full.stop)
    original = {"_select": _Loop._select, "_label": _Loop._label}

    def interrupt(name):
        def once(self, *a):
            monkeypatch.setattr(_Loop, name, original[name])
            raise KeyboardInterrupt
        monkeypatch.setattr(_Loop, name, once)

    out = tmp_path / "interrupted"
    interrupt("_select")  # cycle 0 trained and recorded, nothing selected yet
    assert main(["active", "--out", str(out), *args]) == 130
    assert len(state(out)["cycles"]) == 1 and "query" not in state(out)["cycles"][0]
    interrupt("_label")  # the query recorded, its labels not yet
    assert main(["active", "--out", str(out), "--resume"]) == 130
    assert state(out)["pending"]["cycle"] == 1 and len(state(out)["labeled"]["index"]) == 100
    assert main(["active", "--out", str(out), "--resume", *args]) == 0  # the same settings may be repeated
    full.wait()
    assert comparable(state(out)) == comparable(state(tmp_path / "full"))
    assert f"interrupted; continue with: camssl active --out {out} --resume" in capsys.readouterr().err


def test_files_oracle_round_trip(tmp_path, capsys):
    out = tmp_path / "files"
    args = ["--strategy", "entropy", "--initial", "100", "--budget", "20", "--cycles", "1", "--oracle", "files",
            *TINY_ACTIVE]
    assert main(["active", "--out", str(out), *args]) == 0
    assert "20 images to label" in capsys.readouterr().out and state(out)["pending"]["csv"] == "queries/cycle_1.csv"
    csv_path = out / "queries" / "cycle_1.csv"
    before = snapshot(out)
    fails(["active", "--out", str(out), "--resume"], capsys, "20 of the 20 queried images", "no label yet")
    rows = list(csv.DictReader(csv_path.open()))
    classes = state(out)["classes"]
    truth = {r["file"]: classes[(k * 3) % 10] for k, r in enumerate(rows)}  # labels a person gave (not the data's)

    def write(extra: str = "", wrong_class: str | None = None) -> None:
        body = "".join(f"{f},{wrong_class if wrong_class and k == 0 else y}\n" for k, (f, y) in enumerate(truth.items()))
        csv_path.write_text("file,label\n" + body + extra)

    write(extra="123456.png,cat\n")
    fails(["active", "--out", str(out), "--resume"], capsys, "unknown file '123456.png'", str(csv_path))
    write(wrong_class="unicorn")
    fails(["active", "--out", str(out), "--resume"], capsys, "unknown class 'unicorn'", "valid classes: airplane")
    assert {k: v for k, v in snapshot(out).items() if not k.endswith(".csv")} == \
        {k: v for k, v in before.items() if not k.endswith(".csv")}  # nothing lost or changed
    write()
    assert main(["active", "--out", str(out), "--resume"]) == 0
    s = state(out)
    assert s["finished"] and s["labeled"]["cycle"][100:] == [1] * 20
    given = {f"{i:06d}.png": classes[y] for i, y in zip(s["labeled"]["index"][100:], s["labeled"]["label"][100:])}
    assert given == truth  # the person's labels, as written
    split = json.loads((out / "cycle_1" / "split.json").read_text())
    initial = torch.bincount(torch.tensor(s["labeled"]["label"][:100]), minlength=10)
    person = torch.bincount(torch.tensor([classes.index(v) for v in truth.values()]), minlength=10)
    assert split["counts"]["labeled"] == (initial + person).tolist()  # cycle 1 trained on those labels
    fails(["active", "--out", str(out), *args], capsys, "already holds an active-learning run", "--resume")


@pytest.mark.parametrize("argv, needles", [
    (["--budget", "1501"], ["--budget 1501 is larger than the pool of 1500"]),
    (["--budget", "800", "--cycles", "2"], ["--budget 800 x --cycles 2 = 1600", "exceed the pool of 1500"]),
    (["--initial", "0"], ["--initial 0 is invalid"]),
    (["--initial", "2001"], ["--initial 2001 is more than the 2000 training images outside the validation set"]),
    (["--initial", "5"], ["fewer than the 10 classes"]),
    (["--strategy", "bald"], ["unknown strategy 'bald'; choose one of: random, entropy, coreset, revival"]),
    (["--labeled", "100"], ["--labeled does not apply to camssl active"]),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, needles, tmp_path, capsys):
    out = tmp_path / "out"
    fails(["active", "--out", str(out), "--initial", "500", *TINY_ACTIVE, *argv], capsys, *needles)
    assert not out.exists()


def test_resume_needs_a_run_and_keeps_its_settings(revival_run, tmp_path, capsys):
    fails(["active", "--out", str(tmp_path), "--resume"], capsys, "holds no active-learning run (no active.json)")
    out, _ = revival_run
    before = snapshot(out)
    fails(["active", "--out", str(out), "--resume", *REVIVAL, "--budget", "40"], capsys,
          "was started with active.budget=50, not 40")
    (tmp_path / "x").write_text("a file")
    fails(["active", "--out", str(tmp_path), *REVIVAL], capsys, "not an empty directory")
    assert snapshot(out) == before


def test_active_table_pairs_strategies_by_seed(revival_run, tmp_path, capsys):
    out, _ = revival_run
    rand, arch = tmp_path / "random", tmp_path / "docs-runs"
    assert main(["active", "--out", str(rand), *REVIVAL[2:], "--strategy", "random", "--first-cycle-from", str(out),
                 "--archive", str(arch / "random-s0")]) == 0
    printed = capsys.readouterr().out
    assert "cycle 0: copied from" in printed and f"3 cycles' small files in {arch / 'random-s0'}" in printed
    first = state(rand)["cycles"][0]  # cycle 0 copied, not trained: the same result and files, marked
    assert first["reused_from"] == str(out.resolve())
    source = state(out)["cycles"][0]
    assert {k: v for k, v in first.items() if k not in ("reused_from", "query", "time")} == \
        {k: v for k, v in source.items() if k not in ("query", "time")}
    assert first["time"]["train_s"] == source["time"]["train_s"]
    for name in ("result.json", "metrics.jsonl", "last.pt"):
        assert (rand / "cycle_0" / name).read_bytes() == (out / "cycle_0" / name).read_bytes()
    table = tmp_path / "table"
    assert main(["active-table", str(out), str(rand), "--out", str(table)]) == 0
    md = (table / "curves.md").read_text()
    rows = list(csv.DictReader((table / "curves.csv").open()))
    assert len(rows) == 6 and {r["strategy"] for r in rows} == {"random", "revival"}
    acc = {(r["strategy"], int(r["cycle"])): float(r["acc"]) for r in rows}
    assert acc["random", 0] == acc["revival", 0]  # cycle 0: the same initial set, the same training
    assert "| 0 | 100 | " in md and "+0.00 (1)" in md
    diff2 = 100 * (acc["revival", 2] - acc["random", 2])
    assert f"| 2 | 200 | {diff2:+.2f} (1) |" in md
    assert (table / "curves.png").read_bytes()[:4] == b"\x89PNG"
    diag = list(csv.DictReader((table / "diagnostics.csv").open()))  # one row per query: 2 runs x 2 queries
    assert sorted((d["strategy"], int(d["cycle"])) for d in diag) == [("random", 0), ("random", 1),
                                                                       ("revival", 0), ("revival", 1)]
    saved = state(out)["cycles"][1]
    row = next(d for d in diag if d["strategy"] == "revival" and d["cycle"] == "1")
    assert float(row["selection_s"]) == pytest.approx(saved["time"]["features_s"] + saved["time"]["select_s"])
    assert [int(x) for x in row["class_histogram"].split()] == saved["query"]["class_histogram"]
    dmd = (table / "diagnostics.md").read_text()
    assert "| revival | 1 | 150 | " in dmd and "| random | 0 | 100 | " in dmd
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "active.json").write_bytes((out / "active.json").read_bytes())
    fails(["active-table", str(out), str(tmp_path / "copy")], capsys, "two runs of strategy revival with seed 0")
    # the archive (a finished run archived by --resume --archive): the same tables, without checkpoints
    fails(["active", "--out", str(out), "--resume", "--archive", str(arch / "random-s0")], capsys,
          "already holds the run of strategy random with seed 0, not revival with seed 0")
    fails(["active", "--out", str(out), "--resume", "--archive", str(out / "keep")], capsys, "is inside the run's --out")
    assert main(["active", "--out", str(out), "--resume", "--archive", str(arch / "revival-s0")]) == 0
    assert sorted(p.relative_to(arch).as_posix() for p in arch.rglob("*.json")) == sorted(
        f"{run}/{f}" for run in ("random-s0", "revival-s0") for f in
        ("active.json", *(f"cycle_{c}/{n}" for c in range(3) for n in ("split.json", "result.json"))))
    assert not list(arch.rglob("*.pt")) and (arch / "revival-s0/cycle_2/metrics.jsonl").exists()
    assert (arch / "revival-s0/active.json").read_bytes() == (out / "active.json").read_bytes()
    assert main(["active-table", str(arch), "--out", str(tmp_path / "from-archive")]) == 0
    for name in ("curves.csv", "diagnostics.csv", "curves.md", "diagnostics.md"):  # rows in folder order
        assert sorted((tmp_path / "from-archive" / name).read_text().splitlines()) == \
            sorted((table / name).read_text().splitlines())


@pytest.mark.parametrize("argv, needle", [
    (["--width", "0.25"], "was trained with model.width=0.125, not 0.25"),
    (["--seed", "1"], "seed=0, not 1"),
    (["--initial", "120"], "has another validation or initial labeled set"),
])
def test_first_cycle_from_must_be_the_same_cycle_0(revival_run, argv, needle, tmp_path, capsys):
    out, _ = revival_run
    new = tmp_path / "new"
    fails(["active", "--out", str(new), *REVIVAL, *argv, "--first-cycle-from", str(out)], capsys, needle,
          "drop --first-cycle-from")
    assert not new.exists()
    fails(["active", "--out", str(new), *REVIVAL, "--first-cycle-from", str(tmp_path)], capsys,
          "holds no active-learning run (no active.json)")
    fails(["active", "--out", str(out), "--resume", "--first-cycle-from", str(out)], capsys,
          "--first-cycle-from starts a new run")


def test_fixed_feature_script_on_the_mini_set(revival_run, tmp_path, monkeypatch, capsys):
    out, _ = revival_run
    res = tmp_path / "probe"
    monkeypatch.setattr(sys, "argv", [
        "active_features.py", "--run", str(out / "cycle_2"), "--data", "mini", "--pool", "400", "--initial", "20",
        "--budget", "10", "--cycles", "2", "--seeds", "0", "1", "--out", str(res), "--revival", "k=10"])
    with pytest.raises(SystemExit) as done:  # the script as `python scripts/active_features.py ...` runs it
        runpy.run_path(str(SCRIPTS / "active_features.py"), run_name="__main__")
    assert done.value.code == 0, capsys.readouterr().err[-3000:]
    rows = list(csv.DictReader((res / "curves.csv").open()))
    assert len(rows) == 4 * 2 * 3 and {int(r["n_labeled"]) for r in rows} == {20, 30, 40}
    for seed in ("0", "1"):  # the same initial set for every strategy: the same cycle-0 probe
        assert len({r["acc"] for r in rows if r["seed"] == seed and r["cycle"] == "0"}) == 1
    diag = list(csv.DictReader((res / "diagnostics.csv").open()))
    assert len(diag) == 24 and all(0 <= float(d["virtual_acc_pool"]) <= 1 for d in diag)
    assert "Paired difference minus random" in (res / "curves.md").read_text()
    assert json.loads((res / "settings.json").read_text())["revival"] == {"k": 10}


def test_warm_start_starts_each_cycle_from_the_previous_final_weights(tmp_path, monkeypatch, capsys):
    import camssl.active.loop as loop

    inits = []

    class Recording(loop.Trainer):
        def __init__(self, *a, init=None, **kw):
            inits.append(init)
            super().__init__(*a, init=init, **kw)

    monkeypatch.setattr(loop, "Trainer", Recording)
    out = tmp_path / "warm"
    args = ["--strategy", "random", "--initial", "100", "--budget", "20", "--cycles", "1", "--warm-start", *TINY_ACTIVE]
    assert main(["active", "--out", str(out), *args]) == 0
    assert inits == [None, out / "cycle_0" / "last.pt"] and state(out)["active"]["warm_start"] is True
    assert "(warm start)" in capsys.readouterr().out


def test_subset_scores_the_labeled_set_and_a_fresh_random_part_of_the_pool(tmp_path, monkeypatch, capsys):
    import camssl.active.loop as loop

    seen, original = [], loop.select

    def recording(name, ctx, budget):
        seen.append((len(ctx.features), len(ctx.labeled)))
        return original(name, ctx, budget)

    monkeypatch.setattr(loop, "select", recording)
    out = tmp_path / "subset"
    args = ["--strategy", "entropy", "--initial", "100", "--budget", "20", "--cycles", "2", "active.subset=60",
            *TINY_ACTIVE]
    assert main(["active", "--out", str(out), *args]) == 0
    assert seen == [(160, 100), (180, 120)]  # the labeled set so far + 60 pool images
    s = state(out)
    assert [c["query"]["scored_pool"] for c in s["cycles"][:2]] == [60, 60]
    queried = s["cycles"][0]["query"]["index"] + s["cycles"][1]["query"]["index"]
    assert len(set(queried)) == 40 and not set(queried) & (set(s["val"]) | set(s["labeled"]["index"][:100]))
    assert fails(["active", "--out", str(tmp_path / "bad"), *args[:6], "active.subset=10", *TINY_ACTIVE], capsys,
                 "active.subset=10 is smaller than --budget 20")
