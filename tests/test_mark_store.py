"""The rating app's state, orders, imports and export, without a browser (pyfundus.mark.store, order, importing, export)."""

from __future__ import annotations

import csv
import hashlib
import json
import sqlite3
import time

import pytest
from mark_helpers import PASSWORDS, add_raters, fundus_png, make_dataset

from pyfundus.daemon.ledger import Ledger
from pyfundus.daemon.records import FileStat, Verdict, WorkItem
from pyfundus.data.datasets import load_records
from pyfundus.mark.aggregate import aggregate, read_ratings
from pyfundus.mark.export import collect, export_dataset
from pyfundus.mark.importing import import_ledger, import_ratings, read_ledger
from pyfundus.mark.order import rater_order, uncertainty
from pyfundus.mark.store import DB_NAME, STATE_DIR_NAME, MarkError, Store

NAMES = ["a.png", "b.png", "c.png", "d.png"]


@pytest.fixture
def store(tmp_path):
    folder = make_dataset(tmp_path / "captures", NAMES)
    opened = Store(folder)
    opened.scan()
    yield opened
    opened.close()


def ids(store: Store) -> dict[str, int]:
    return {image.path: image.id for image in store.images()}


# ---- accounts and sessions ------------------------------------------------------------


def test_passwords_are_stored_as_salted_scrypt_hashes_and_checked(store):
    raters = add_raters(store)
    rows = sqlite3.connect(store.path).execute("SELECT name, password FROM raters ORDER BY name").fetchall()
    for name, stored in rows:
        assert PASSWORDS[name] not in stored
        kind, n, r, p, salt, digest = stored.split("$")
        assert (kind, n, r, p) == ("scrypt", "16384", "8", "1") and len(salt) == 32 and len(digest) == 64
    assert len({stored.split("$")[4] for _, stored in rows}) == 3, "one salt per user"
    assert store.check_password("ana", PASSWORDS["ana"]) == raters["ana"]
    assert store.check_password("ana", PASSWORDS["ben"]) is None
    assert store.check_password("nobody", "whatever-pw") is None
    with pytest.raises(MarkError, match="at least 8 characters"):
        store.add_rater("dan", "junior", "short", actor="test")
    with pytest.raises(MarkError, match="already exists"):
        store.add_rater("ANA", "junior", "long-enough", actor="test")
    with pytest.raises(MarkError, match="rater level 'expert' is not senior or junior"):
        store.add_rater("dan", "expert", "long-enough", actor="test")
    actions = [row["action"] for row in store.audit_trail()]
    assert actions.count("login") == 1 and actions.count("login.failed") == 2 and actions.count("rater.add") == 3


def test_a_session_token_is_stored_only_as_a_hash_and_ends_with_logout_or_disabling(store):
    raters = add_raters(store)
    token = store.open_session(raters["ben"])
    assert store.session_rater(token) == raters["ben"]
    stored = [row[0] for row in sqlite3.connect(store.path).execute("SELECT token_sha256 FROM sessions")]
    assert stored == [hashlib.sha256(token.encode()).hexdigest()]
    store.close_session(token)
    assert store.session_rater(token) is None
    token = store.open_session(raters["ben"])
    store.edit_rater("ben", actor="test", active=False)
    assert store.session_rater(token) is None and store.check_password("ben", PASSWORDS["ben"]) is None


# ---- images, opinions, blinding, the audit trail --------------------------------------------


def test_a_renamed_image_keeps_its_opinions_and_a_removed_one_leaves_the_rating_set(store):
    raters = add_raters(store)
    store.set_opinion(raters["ana"], ids(store)["a.png"], 70, "Good")
    (store.dataset / "a.png").rename(store.dataset / "renamed.png")
    (store.dataset / "b.png").unlink()
    (store.dataset / "sub").mkdir()
    (store.dataset / "sub" / "e.png").write_bytes(fundus_png(40))
    (store.dataset / "notes.txt").write_text("not an image")
    report = store.scan()
    assert (report.added, report.moved, report.gone, report.total) == (1, 1, 1, 4)
    assert sorted(image.path for image in store.rating_set()) == ["c.png", "d.png", "renamed.png", "sub/e.png"]
    assert store.opinions_of(raters["ana"]) == {ids(store)["renamed.png"]: {"score": 70, "level": "Good"}}
    assert (store.dataset / STATE_DIR_NAME / DB_NAME).exists(), "the state lives in the dataset's hidden folder"


def test_opinions_survive_a_restart_and_revising_one_after_seeing_others_is_not_blind(store):
    raters = add_raters(store)
    image = ids(store)["c.png"]
    assert store.set_opinion(raters["ana"], image, 64, "Usable")
    assert store.set_opinion(raters["ben"], image, 80, "Good")
    assert store.others_opinions(raters["ana"], image) == [{"name": "ben", "rater_level": "junior", "score": 80,
                                                            "level": "Good"}]  # fmt: skip
    assert not store.set_opinion(raters["ana"], image, 64, "Usable"), "unchanged: nothing stored, nothing audited"
    assert store.set_opinion(raters["ana"], image, 72, "Good")
    store.close()
    reopened = Store(store.dataset)
    ana = reopened.rater("ana")
    assert reopened.opinion(ana, image)["score"] == 72 and reopened.opinion(ana, image)["blind"] == 0
    assert reopened.opinion(reopened.rater("ben"), image)["blind"] == 1
    changes = [row for row in reopened.audit_trail() if row["action"] == "opinion.set"]
    assert [c["detail"]["score"] for c in changes] == [72, 80, 64], "every change, newest first"
    assert changes[0]["detail"]["was"] == {"score": 64, "level": "Usable"} and changes[0]["detail"]["blind"] is False
    with pytest.raises(MarkError, match="score 101 is not a whole number 0-100"):
        reopened.set_opinion(ana, image, 101, "Good")
    with pytest.raises(MarkError, match="level 'good' is not one of Good, Usable, Reject"):
        reopened.set_opinion(ana, image, 50, "good")
    reopened.close()


def test_the_audit_trail_and_the_adjustments_cannot_be_edited(store):
    raters = add_raters(store)
    image = ids(store)["a.png"]
    store.set_opinion(raters["ana"], image, 82, "Good")
    store.adjust(raters["cleo"], image, 60.0, "Usable", "discussed: blur at the macula")
    conn = sqlite3.connect(store.path)
    for statement in ("UPDATE audit SET actor = 'someone else'", "DELETE FROM audit",
                      "UPDATE adjustments SET score = 99", "DELETE FROM adjustments"):  # fmt: skip
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(statement)
    conn.close()
    with pytest.raises(MarkError, match="only an admin"):
        store.adjust(raters["ana"], image, 50.0, "Usable", "I changed my mind")
    with pytest.raises(MarkError, match="say why"):
        store.adjust(raters["cleo"], image, 50.0, "Usable", "  ")


def test_a_reference_image_leaves_the_rating_set_and_only_an_admin_sets_one(store):
    raters = add_raters(store)
    image = ids(store)["d.png"]
    with pytest.raises(MarkError, match="only an admin"):
        store.set_anchor(raters["ana"], image, 90, "Good", "")
    store.set_anchor(raters["cleo"], image, 90, "Good", "sharp vessels to the periphery")
    assert "d.png" not in [i.path for i in store.rating_set()]
    assert store.anchors() == [{"id": image, "name": "d.png", "score": 90, "level": "Good",
                                "comment": "sharp vessels to the periphery"}]  # fmt: skip
    store.remove_anchor(raters["cleo"], image)
    assert "d.png" in [i.path for i in store.rating_set()]


# ---- order -----------------------------------------------------------------------------


def test_each_rater_has_a_stable_shuffle_and_uncertain_puts_the_model_s_doubts_first(store):
    images = store.rating_set()
    ana = [i.path for i in rater_order(images, "ana", "random")]
    assert ana == [i.path for i in rater_order(list(reversed(images)), "ana", "random")], "stable"
    assert sorted(ana) == sorted(NAMES)
    assert {tuple(i.path for i in rater_order(images, name, "random")) for name in ("ana", "ben", "cleo", "dan")} != {
        tuple(ana)}, "not the same order for everyone"  # fmt: skip
    by_path = ids(store)
    store.set_model_scores("stub", [
        (by_path["a.png"], 90.0, "Good", {"Good": 0.99, "Usable": 0.01, "Reject": 0.0}),
        (by_path["b.png"], 40.5, "Usable", {"Good": 0.0, "Usable": 0.53, "Reject": 0.47}),  # at a threshold
        (by_path["c.png"], 66.0, "Usable", {"Good": 0.28, "Usable": 0.72, "Reject": 0.0}),
    ])  # fmt: skip
    order = [i.path for i in rater_order(store.rating_set(), "ana", "uncertain")]
    assert order == ["b.png", "c.png", "a.png", "d.png"], "most probability off the top class first; unscored last"
    assert uncertainty({"Good": 0.5, "Usable": 0.5, "Reject": 0.0}) == pytest.approx(0.5)


# ---- imports ---------------------------------------------------------------------------


def test_import_ratings_checks_the_whole_file_first_then_stores_and_audits(store, tmp_path):
    add_raters(store)
    table = tmp_path / "old.csv"
    table.write_text("file_name,rater,rater_level,score,level\n"
                     "a.png,ana,senior,75,Good\nb.png,zoe,junior,40,Usable\nmissing.png,zoe,junior,10,Reject\n")  # fmt: skip
    with pytest.raises(MarkError, match=r"old.csv: 1 file_name\(s\) are not images of the dataset .*: missing.png"):
        import_ratings(store, table, actor="test")
    assert store.all_opinions() == [] and [r.name for r in store.raters()] == ["ana", "ben", "cleo"]
    table.write_text("file_name,rater,rater_level,score,level\na.png,ana,senior,75,Good\nb.png,zoe,junior,40,Usable\n")
    counts = import_ratings(store, table, actor="test")
    assert counts == {"opinions": 2, "added": 2, "changed": 0, "unchanged": 0, "new_raters": ["zoe"]}
    zoe = store.rater("zoe")
    assert zoe.level == "junior" and not zoe.can_log_in
    assert store.opinion(zoe, ids(store)["b.png"])["blind"] is None, "imported: blinding unknown"
    table.write_text("file_name,rater,rater_level,score,level\na.png,ana,senior,77,Good\nb.png,zoe,junior,40,Usable\n")
    assert import_ratings(store, table, actor="test")["changed"] == 1
    table.write_text("file_name,rater,rater_level,score,level\na.png,ana,junior,77,Good\n")
    with pytest.raises(MarkError, match="rater 'ana' is junior here but senior in the dataset"):
        import_ratings(store, table, actor="test")


def daemon_ledger(state_dir, captures):
    """A real pyfundus watch ledger holding ``captures``: (path, score, class, model) each, scored."""
    state_dir.mkdir()
    ledger = Ledger(state_dir / "ledger.sqlite3")
    now = time.time()
    for path, score, level, model in captures:
        data = path.read_bytes()
        item = WorkItem(hashlib.sha256(data).hexdigest(), str(path), FileStat(len(data), 0), detected_at=0.0)
        ledger.claim(item.sha256, item.path, item.stat, now)
        probabilities = {"Good": 0.1, "Usable": 0.8, "Reject": 0.1}
        ledger.record([(item, Verdict(path=item.path, sha256=item.sha256, state="scored", score=score,
                                      quality_class=level, probabilities=probabilities, model=model,
                                      first_seen=now, scored_at=now))])  # fmt: skip
    ledger.close()
    return state_dir


def test_import_ledger_copies_unchanged_captures_in_with_the_daemon_s_score_and_operator_labels(store, tmp_path):
    camera = tmp_path / "camera"
    camera.mkdir()
    for seed, name in ((10, "cap1.png"), (11, "cap2.png"), (12, "a.png"), (13, "cap3.png")):
        (camera / name).write_bytes(fundus_png(seed))  # a.png: named like a dataset image, other content
    state = daemon_ledger(tmp_path / "state", [(camera / "cap1.png", 35.0, "Reject", "fthnet_s"),
                                               (camera / "cap2.png", 80.0, "Good", "fthnet_s"),
                                               (camera / "a.png", 55.0, "Usable", "fthnet_s"),
                                               (camera / "cap3.png", 60.0, "Usable", "fthnet_s")])  # fmt: skip
    (camera / "cap3.png").write_bytes(fundus_png(14))  # changed after scoring: not the image the verdict is about
    sha1, sha2 = (hashlib.sha256((camera / name).read_bytes()).hexdigest() for name in ("cap1.png", "cap2.png"))
    ledger = Ledger(state / "ledger.sqlite3")  # the operator's clicks on the operator page
    ledger.add_feedback(sha1, "retake", 1.0)
    ledger.add_feedback(sha1, "fine", 2.0)  # changed their mind: both clicks are hints
    ledger.add_feedback(sha2, "fine", 3.0)
    ledger.close()

    counts = import_ledger(store, read_ledger(state), actor="test")
    assert (counts["captures"], counts["added"], counts["file_gone"], counts["hints"]) == (4, 3, 1, 3)
    paths = sorted(i.path for i in store.rating_set())
    assert paths == ["a (1).png", "a.png", "b.png", "c.png", "cap1.png", "cap2.png", "d.png"], "a name taken gets (1)"
    assert (store.dataset / "cap1.png").read_bytes() == (camera / "cap1.png").read_bytes()
    image = next(i for i in store.rating_set() if i.path == "cap1.png")
    assert image.model_view() == {"model": "fthnet_s", "score": 35.0, "level": "Reject"}
    assert store.hints(image.id) == [{"source": "operator", "level": "Reject", "note": "retake anyway", "at": 1.0},
                                     {"source": "operator", "level": "Good", "note": "fine as it is", "at": 2.0}]
    cap2 = next(i for i in store.rating_set() if i.path == "cap2.png")
    assert store.hints(cap2.id) == [{"source": "operator", "level": "Good", "note": "fine as it is", "at": 3.0}]
    again = import_ledger(store, read_ledger(state), actor="test")
    assert (again["added"], again["already"], again["hints"]) == (0, 3, 0), "importing twice changes nothing"
    with pytest.raises(MarkError, match="no ledger in"):
        read_ledger(tmp_path / "elsewhere")


# ---- export ----------------------------------------------------------------------------


def rate_all(store, raters):
    """Hand-picked opinions: a.png senior 82 Good / junior 30 Reject; b.png both Usable; c.png senior only."""
    by_path = ids(store)
    store.set_opinion(raters["ana"], by_path["a.png"], 82, "Good")
    store.set_opinion(raters["ben"], by_path["a.png"], 30, "Reject")
    store.set_opinion(raters["ana"], by_path["b.png"], 50, "Usable")
    store.set_opinion(raters["ben"], by_path["b.png"], 44, "Usable")
    store.set_opinion(raters["cleo"], by_path["c.png"], 91, "Good")


def test_the_export_is_the_fqs_layout_that_training_reads_with_adjustments_applied(store, tmp_path):
    raters = add_raters(store)
    rate_all(store, raters)
    store.adjust(raters["cleo"], ids(store)["a.png"], 60.0, "Usable", "discussed: periphery soft")
    out = tmp_path / "export"
    report = export_dataset(store, out)
    assert report["images"] == 3 and report["adjusted"] == 1 and report["classes"] == {"Good": 1, "Usable": 2, "Reject": 0}

    with open(out / "labels.csv", newline="") as f:
        labels = {row["file_name"]: row for row in csv.DictReader(f)}
    # a.png: adjusted to 60 Usable; b.png: (2 x 50 + 44) / 3 = 48; c.png: 91 Good. FQS codes: 0 Good, 1 Usable.
    assert {name: (row["meanOpinionScore"], row["qualityLevel"]) for name, row in labels.items()} == {
        "a.png": ("60.00", "1"), "b.png": ("48.00", "1"), "c.png": ("91.00", "0")}  # fmt: skip
    records = {r.path.name: r for r in load_records(out)}  # what pyfundus train --data OUT reads
    assert {name: (r.mos, r.level) for name, r in records.items()} == {
        "a.png": (60.0, "Usable"), "b.png": (48.0, "Usable"), "c.png": (91.0, "Good")}  # fmt: skip
    assert all(r.path.read_bytes() == (store.dataset / r.path.name).read_bytes() for r in records.values())
    assert sorted(p.name for p in (out / "good").iterdir()) == ["c.png"]
    assert sorted(p.name for p in (out / "usable").iterdir()) == ["a.png", "b.png"]
    assert list((out / "reject").iterdir()) == []

    # mos.csv is the raters' aggregate: exactly what aggregating ratings.csv gives.
    again = aggregate(read_ratings(out / "ratings.csv"))
    with open(out / "mos.csv", newline="") as f:
        assert list(csv.DictReader(f)) == [{k: str(v) for k, v in r.to_row().items()} for r in again]
    assert next(r for r in again if r.file_name == "a.png").to_row()["meanOpinionScore"] == "64.67"  # (164 + 30) / 3
    with open(out / "adjustments.csv", newline="") as f:
        (adjusted,) = list(csv.DictReader(f))
    assert (adjusted["file_name"], adjusted["raters_mos"], adjusted["raters_level"], adjusted["meanOpinionScore"],
            adjusted["adjusted_by"], adjusted["reason"]) == ("a.png", "64.67", "Good", "60.00", "cleo",
                                                            "discussed: periphery soft")  # fmt: skip
    with open(out / "ratings.csv", newline="") as f:
        assert [(r["rater"], r["blind"]) for r in csv.DictReader(f)][:2] == [("ana", "true"), ("ben", "true")]
    assert report["use"][1].startswith("pyfundus calibrate --good ") and report["use"][2].endswith("/good")
    for name in ("mos_histogram.png", "sd_histogram.png"):
        assert (out / name).stat().st_size > 1000


def test_the_export_refuses_an_unsafe_folder_and_names_nested_images_flat(store, tmp_path):
    raters = add_raters(store)
    (store.dataset / "day2").mkdir()
    (store.dataset / "day2" / "x.png").write_bytes(fundus_png(77))
    store.scan()
    store.set_opinion(raters["ana"], ids(store)["day2/x.png"], 55, "Usable")
    with pytest.raises(MarkError, match="export outside the dataset folder"):
        export_dataset(store, store.dataset / "export")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("x")
    with pytest.raises(MarkError, match="not an empty folder"):
        export_dataset(store, tmp_path / "used")
    export_dataset(store, tmp_path / "out", min_raters=1, plots=False)
    assert (tmp_path / "out" / "images" / "day2__x.png").exists()
    assert collect(store, min_raters=2).results == []
    with pytest.raises(MarkError, match="no image has 2 or more opinions"):
        export_dataset(store, tmp_path / "out2", min_raters=2)


def test_a_status_report_counts_what_a_script_needs(store):
    raters = add_raters(store)
    rate_all(store, raters)
    progress = {row["name"]: row["scored"] for row in store.progress()}
    assert progress == {"ana": 2, "ben": 2, "cleo": 1}
    assert json.dumps(store.audit_trail(limit=2))  # JSON-ready for `pyfundus mark audit --json`
