"""`pyfundus mark` on the command line: accounts, status, imports, disagreements, export, audit, serve."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from daemon_helpers import BrightnessScorer
from mark_helpers import fundus_png, make_dataset

from pyfundus.cli import main
from pyfundus.mark.order import rater_order, score_unscored
from pyfundus.mark.store import Store

NAMES = ["a.png", "b.png", "c.png"]


def run(args: list[str], stdin: str = "", capsys=None) -> tuple[int, str, str]:
    """``pyfundus ARGS`` in this process, with ``stdin`` as standard input (not a terminal)."""
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        code = main(args)
    finally:
        sys.stdin = saved
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "captures", NAMES)


def test_accounts_are_added_with_a_password_from_stdin_listed_and_edited(dataset, capsys):
    d = ["-d", str(dataset)]
    assert run(["mark", "user", "add", "ana", "--level", "senior", "--admin", *d], "ana-password\n", capsys)[0] == 0
    assert run(["mark", "user", "add", "ben", "--level", "junior", *d], "ben-password\n", capsys)[0] == 0
    code, _, err = run(["mark", "user", "add", "cy", "--level", "junior", *d], "short\n", capsys)
    assert code == 2 and "at least 8 characters" in err
    code, _, err = run(["mark", "user", "add", "dee", "--level", "junior", *d], "", capsys)
    assert code == 2 and "no password on standard input" in err
    code, out, _ = run(["mark", "user", "list", *d, "--json"], "", capsys)
    listed = json.loads(out)
    assert [(r["name"], r["level"], r["admin"], r["can_log_in"]) for r in listed] == [
        ("ana", "senior", True, True), ("ben", "junior", False, True)]  # fmt: skip
    assert run(["mark", "user", "edit", "ben", "--level", "senior", "--no-active", *d], "", capsys)[0] == 0
    store = Store(dataset, create=False)
    assert store.rater("ben").level == "senior" and not store.rater("ben").active
    assert store.check_password("ana", "ana-password") is not None
    assert [row["action"] for row in store.audit_trail()][:2] == ["login", "rater.edit"]
    store.close()
    code, _, err = run(["mark", "user", "edit", "zed", "--admin", *d], "", capsys)
    assert code == 2 and "no rater named 'zed'" in err


def test_commands_on_a_folder_without_a_rating_database_say_how_to_start(tmp_path, capsys):
    code, _, err = run(["mark", "status", "-d", str(tmp_path), "--json"], "", capsys)
    assert code == 2 and "has no rating database" in err and "pyfundus mark user add" in err
    code, _, err = run(["mark", "status", "-d", str(tmp_path / "nowhere")], "", capsys)
    assert code == 2 and "no such dataset folder" in err


def test_import_status_disagreements_export_and_audit_speak_json(dataset, tmp_path, capsys):
    d = ["-d", str(dataset)]
    run(["mark", "user", "add", "ana", "--level", "senior", "--admin", *d], "ana-password\n", capsys)
    ratings = tmp_path / "old.csv"
    ratings.write_text("file_name,rater,rater_level,score,level\n"
                       "a.png,ana,senior,82,Good\na.png,ben,junior,30,Reject\nb.png,ana,senior,66,Usable\n")  # fmt: skip
    code, out, _ = run(["mark", "import-ratings", str(ratings), *d, "--json"], "", capsys)
    assert code == 0 and json.loads(out) == {"opinions": 3, "added": 3, "changed": 0, "unchanged": 0,
                                             "new_raters": ["ben"]}  # fmt: skip
    code, out, _ = run(["mark", "status", *d, "--json"], "", capsys)
    status = json.loads(out)
    assert (status["images"], status["rated"], status["disagreements"]) == (3, 2, 1)
    assert {r["name"]: r["scored"] for r in status["raters"]} == {"ana": 2, "ben": 1}
    code, out, _ = run(["mark", "disagreements", *d, "--json"], "", capsys)
    (row,) = json.loads(out)
    assert (row["file_name"], row["mos"], row["level"], row["sd"]) == ("a.png", 64.67, "Good", 36.77)
    code, out, _ = run(["mark", "export", *d, "--out", str(tmp_path / "out"), "--json"], "", capsys)
    report = json.loads(out)
    assert code == 0 and report["images"] == 2 and report["classes"] == {"Good": 1, "Usable": 1, "Reject": 0}
    assert report["use"][0] == f"pyfundus train --data {tmp_path / 'out'}"
    code, out, _ = run(["mark", "audit", *d, "--json", "-n", "0"], "", capsys)
    actions = [row["action"] for row in json.loads(out)]
    assert actions.count("opinion.set") == 3 and actions[0] == "import.ratings" and actions[-1] == "rater.add"
    bad = tmp_path / "bad.csv"
    bad.write_text("file_name,rater,rater_level,score,level\na.png,ana,senior,high,Good\n")
    code, _, err = run(["mark", "import-ratings", str(bad), *d], "", capsys)
    assert code == 2 and f"{bad}, line 2: score 'high' is not a whole number 0-100" in err


def test_the_export_feeds_calibrate_and_adapt_by_its_class_folders(dataset, tmp_path, capsys):
    store = Store(dataset)
    store.scan()
    ana = store.add_rater("ana", "senior", "ana-password", actor="test")
    for name, score, level in (("a.png", 85, "Good"), ("b.png", 20, "Reject"), ("c.png", 90, "Good")):
        store.set_opinion(ana, next(i.id for i in store.images() if i.path == name), score, level)
    store.close()
    out = tmp_path / "out"
    code, text, _ = run(["mark", "export", "-d", str(dataset), "--out", str(out)], "", capsys)
    assert code == 0 and f"pyfundus calibrate --good {out / 'good'} --reject {out / 'reject'}" in text
    assert f"pyfundus adapt --good {out / 'good'}" in text
    from pyfundus.inputs import collect_inputs  # what calibrate (and adapt) read from a folder

    assert [Path(p).name for p in collect_inputs([str(out / "good")]).files] == ["a.png", "c.png"]
    assert all((out / "good" / n).read_bytes() == (dataset / n).read_bytes() for n in ("a.png", "c.png"))


class StubModel(BrightnessScorer):
    """The daemon tests' content-derived scorer, with QualityModel.score's progress callback."""

    def score(self, paths, *, batch_size=8, progress=None):
        results = super().score(paths, batch_size=batch_size)
        if progress is not None:
            progress(len(paths))
        return results


@pytest.mark.slow
def test_pyfundus_calibrate_takes_the_export_s_class_folders_as_they_are(dataset, tmp_path, capsys):
    for seed, name in enumerate(NAMES):
        (dataset / name).write_bytes(fundus_png(seed, size=160))  # the model reads images of 128 px and more
    store = Store(dataset)
    store.scan()
    ana = store.add_rater("ana", "senior", "ana-password", actor="test")
    for image, (score, level) in zip(store.rating_set(), ((85, "Good"), (20, "Reject"), (90, "Good"))):
        store.set_opinion(ana, image.id, score, level)
    store.close()
    out = tmp_path / "out"
    assert run(["mark", "export", "-d", str(dataset), "--out", str(out), "--no-progress"], "", capsys)[0] == 0
    code, text, _ = run(["calibrate", "--good", str(out / "good"), "--reject", str(out / "reject"), "--json"], "", capsys)
    report = json.loads(text)
    assert code == 0 and report["n_scored"] == 3 and {k: v["n"] for k, v in report["per_class"].items()} == {
        "Good": 2, "Reject": 1}  # fmt: skip


def test_the_uncertain_order_scores_the_unscored_images_once(dataset):
    store = Store(dataset)
    store.scan()
    scorer = StubModel()
    assert score_unscored(store, scorer) == (3, [])
    assert score_unscored(store, scorer) == (0, []), "already scored by this model"
    assert len(scorer.calls) == 1
    assert all(image.model == "stub-brightness" and image.model_score is not None for image in store.rating_set())
    assert sorted(i.path for i in rater_order(store.rating_set(), "ana", "uncertain")) == NAMES
    store.close()


def serve(dataset: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pyfundus.cli", "mark", "serve", str(dataset), "--port", "0",
                             "--no-progress", *extra], stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip


def test_serve_needs_an_admin_then_serves_until_sigterm(dataset, capsys):
    process = serve(dataset)
    assert process.wait(timeout=60) == 2 and "no admin who can log in" in process.stderr.read()
    run(["mark", "user", "add", "ana", "--level", "senior", "--admin", "-d", str(dataset)], "ana-password\n", capsys)
    process = serve(dataset)
    try:
        lines = [process.stderr.readline() for _ in range(2)]
        assert lines[0].strip() == "3 image(s) in the dataset (3 new)"
        url = lines[1].split()[2]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and b"pyfundus mark" in response.read()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.stderr.close()


@pytest.mark.slow
def test_serve_in_uncertain_order_scores_with_the_real_model_first(dataset, capsys):
    for seed, name in enumerate(NAMES):
        (dataset / name).write_bytes(fundus_png(seed, size=160))  # the model reads images of 128 px and more
    run(["mark", "user", "add", "ana", "--level", "senior", "--admin", "-d", str(dataset)], "ana-password\n", capsys)
    process = serve(dataset, "--order", "uncertain")
    try:
        lines = [process.stderr.readline() for _ in range(3)]
        assert lines[1].strip() == "3 image(s) scored with fthnet_s for the uncertain-first order", lines
        assert lines[2].startswith("rating page: http://127.0.0.1:")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.stderr.close()
    store = Store(dataset, create=False)
    assert all(i.model == "fthnet_s" and i.model_probabilities for i in store.rating_set())
    store.close()
