"""pyfundus.mark.aggregate against values worked out by hand, and `pyfundus mark aggregate` on a CSV."""

from __future__ import annotations

import csv
import json
import math

import pytest

from pyfundus.cli import main
from pyfundus.mark.aggregate import (
    Opinion,
    RatingsError,
    aggregate,
    disagreements,
    mean_opinion_score,
    rater_sd,
    read_ratings,
    vote_level,
)

SENIOR, JUNIOR = "senior", "junior"


def panel(name: str, *opinions: tuple[str, int, str]) -> list[Opinion]:
    """Opinions of one image: (rater_level, score, class) per rater, raters named s1, s2... and j1, j2..."""
    count = {SENIOR: 0, JUNIOR: 0}
    out = []
    for level, score, grade in opinions:
        count[level] += 1
        out.append(Opinion(name, f"{level[0]}{count[level]}", level, score, grade))
    return out


# Three seniors (80, 70, 90) and three juniors (60, 50, 70): S = 240, J = 180.
FQS_PANEL = panel("a.jpg", (SENIOR, 80, "Good"), (SENIOR, 70, "Good"), (SENIOR, 90, "Usable"),
                  (JUNIOR, 60, "Usable"), (JUNIOR, 50, "Usable"), (JUNIOR, 70, "Reject"))  # fmt: skip


def test_weighted_mean_is_two_per_senior_and_one_per_junior():
    # (2 x 240 + 180) / 9 = 660 / 9
    assert mean_opinion_score(FQS_PANEL) == pytest.approx(73.3333333, abs=1e-6)
    # one senior 90, two juniors 60 and 30: (180 + 90) / 4
    assert mean_opinion_score(panel("b", (SENIOR, 90, "Good"), (JUNIOR, 60, "Usable"), (JUNIOR, 30, "Reject"))) == 67.5
    assert mean_opinion_score(panel("c", (JUNIOR, 41, "Usable"))) == 41


def test_the_paper_formula_is_its_published_sum_and_0_99_times_the_weighted_mean():
    # 0.22 x 240 + 0.11 x 180 = 52.8 + 19.8
    assert mean_opinion_score(FQS_PANEL, paper_formula=True) == pytest.approx(72.6, abs=1e-9)
    # The paper's coefficients are 2/9 and 1/9 rounded down to 0.22 and 0.11: 0.99 times the weighted mean.
    assert mean_opinion_score(FQS_PANEL, paper_formula=True) == pytest.approx(0.99 * mean_opinion_score(FQS_PANEL))
    perfect = panel("p", *[(SENIOR, 100, "Good")] * 3, *[(JUNIOR, 100, "Good")] * 3)
    assert mean_opinion_score(perfect, paper_formula=True) == pytest.approx(99.0)
    assert mean_opinion_score(perfect) == 100


def test_the_paper_formula_refuses_a_panel_that_is_not_three_plus_three():
    with pytest.raises(ValueError, match=r"a.jpg: the paper's formula needs 3 senior and 3 junior opinions, this "
                                         r"image has 3 senior and 2 junior"):  # fmt: skip
        mean_opinion_score(FQS_PANEL[:5], paper_formula=True)


def test_the_class_is_a_weighted_vote_and_a_tie_goes_to_the_lower_quality():
    # Good 2+2 = 4, Usable 2+1+1 = 4, Reject 1: Good and Usable tie, Usable wins.
    assert vote_level(FQS_PANEL) == "Usable"
    # One senior Good (2) against two juniors Reject (1 + 1): a tie, so Reject.
    assert vote_level(panel("x", (SENIOR, 80, "Good"), (JUNIOR, 20, "Reject"), (JUNIOR, 25, "Reject"))) == "Reject"
    # One senior Good (2) against one junior Reject (1): Good.
    assert vote_level(panel("x", (SENIOR, 80, "Good"), (JUNIOR, 20, "Reject"))) == "Good"
    # Good 2 against Usable 1 + 1 = 2: a tie, so Usable.
    assert vote_level(panel("x", (SENIOR, 80, "Good"), (JUNIOR, 60, "Usable"), (JUNIOR, 55, "Usable"))) == "Usable"
    # Good 2, Reject 2, Usable 1: Good/Reject tie -> Reject.
    assert vote_level(panel("x", (SENIOR, 80, "Good"), (SENIOR, 20, "Reject"), (JUNIOR, 50, "Usable"))) == "Reject"


def test_the_spread_is_the_sample_sd_of_the_raw_scores():
    # mean 70; squared deviations 100 + 0 + 400 + 100 + 400 + 0 = 1000; 1000 / 5 = 200
    assert rater_sd([o.score for o in FQS_PANEL]) == pytest.approx(math.sqrt(200))
    assert rater_sd([82, 30]) == pytest.approx(26 * math.sqrt(2))  # |82 - 30| / sqrt(2)
    assert rater_sd([50]) is None


def test_the_disagreement_queue_takes_wide_spread_or_differing_classes_widest_first():
    results = aggregate([
        *panel("calm.jpg", (SENIOR, 70, "Good"), (JUNIOR, 72, "Good")),
        *panel("classes.jpg", (SENIOR, 41, "Usable"), (JUNIOR, 38, "Reject")),
        *panel("spread.jpg", (SENIOR, 95, "Good"), (JUNIOR, 70, "Good")),
        *panel("widest.jpg", (SENIOR, 82, "Good"), (JUNIOR, 30, "Reject")),
        *panel("alone.jpg", (SENIOR, 10, "Reject")),
    ])  # fmt: skip
    assert [r.file_name for r in disagreements(results, sd_threshold=10)] == ["widest.jpg", "spread.jpg", "classes.jpg"]
    assert [r.file_name for r in disagreements(results, sd_threshold=20)] == ["widest.jpg", "classes.jpg"]


def write_ratings_csv(path, rows, header="file_name,rater,rater_level,score,level"):
    path.write_text(header + "\n" + "".join(",".join(map(str, row)) + "\n" for row in rows))
    return path


def test_pyfundus_mark_aggregate_writes_mos_csv_and_both_histograms(tmp_path, capsys):
    rows = [(o.file_name, o.rater, o.rater_level, o.score, o.level) for o in FQS_PANEL]
    rows += [("b.jpg", "s1", SENIOR, 82, "Good"), ("b.jpg", "j1", JUNIOR, 30, "Reject")]
    table = write_ratings_csv(tmp_path / "ratings.csv", rows)
    assert main(["mark", "aggregate", str(table), "--out", str(tmp_path / "agg"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    with open(tmp_path / "agg" / "mos.csv", newline="") as f:
        mos = list(csv.DictReader(f))
    assert list(mos[0]) == ["file_name", "meanOpinionScore", "qualityLevel", "sd", "n_raters"]
    assert mos == [
        {"file_name": "a.jpg", "meanOpinionScore": "73.33", "qualityLevel": "Usable", "sd": "14.14", "n_raters": "6"},
        # (2 x 82 + 30) / 3 = 64.67; Good 2 beats Reject 1; SD 52 / sqrt(2) = 36.77
        {"file_name": "b.jpg", "meanOpinionScore": "64.67", "qualityLevel": "Good", "sd": "36.77", "n_raters": "2"},
    ]
    assert report["images"] == 2 and report["opinions"] == 8 and report["raters"] == 6
    assert report["classes"] == {"Good": 1, "Usable": 1, "Reject": 0} and report["disagreements"] == 2
    for name in ("mos_histogram.png", "sd_histogram.png"):
        assert (tmp_path / "agg" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    (tmp_path / "only-a.csv").write_text("".join(table.read_text().splitlines(keepends=True)[:7]))
    assert main(["mark", "aggregate", str(tmp_path / "only-a.csv"), "--out", str(tmp_path / "paper"),
                 "--paper-formula", "--no-plots"]) == 0  # fmt: skip
    assert "a.jpg,72.60,Usable,14.14,6" in (tmp_path / "paper" / "mos.csv").read_text()
    assert not (tmp_path / "paper" / "mos_histogram.png").exists()
    assert main(["mark", "aggregate", str(table), "--out", str(tmp_path / "x"), "--paper-formula"]) == 2
    assert "b.jpg: the paper's formula needs 3 senior and 3 junior" in capsys.readouterr().err


@pytest.mark.parametrize(
    "rows, header, message",
    [
        ([("a.jpg", "ann", "senior", 80, "Good")], "file_name,rater,score,level", r"missing column\(s\) rater_level"),
        ([("a.jpg", "ann", "expert", 80, "Good")], None, r"line 2: rater_level 'expert' is not senior or junior"),
        ([("a.jpg", "ann", "senior", 80, "good")], None, r"line 2: level 'good' is not one of Good, Usable, Reject"),
        ([("a.jpg", "ann", "senior", 80.5, "Good")], None, r"line 2: score '80.5' is not a whole number 0-100"),
        ([("a.jpg", "ann", "senior", 80, "Good"), ("b.jpg", "ann", "senior", 101, "Good")], None,
         r"line 3: score 101 is outside 0-100"),
        ([("a.jpg", "ann", "senior", 80, "Good"), ("a.jpg", "ann", "senior", 70, "Good")], None,
         r"rater 'ann' has two opinions of 'a.jpg'"),
        ([("a.jpg", "ann", "senior", 80, "Good"), ("b.jpg", "ann", "junior", 70, "Good")], None,
         r"rater 'ann' is listed both as senior and junior"),
        ([("", "ann", "senior", 80, "Good")], None, r"line 2: file_name is empty"),
        ([], None, r"no opinions \(only a header\)"),
    ],
)  # fmt: skip
def test_a_bad_ratings_table_names_the_file_line_and_problem(tmp_path, rows, header, message):
    table = write_ratings_csv(tmp_path / "bad.csv", rows, **({"header": header} if header else {}))
    with pytest.raises(RatingsError, match=rf"^{tmp_path / 'bad.csv'}.*{message}"):
        read_ratings(table)


def test_a_missing_ratings_file_is_a_usage_error(tmp_path, capsys):
    assert main(["mark", "aggregate", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'nope.csv'}: no such file" in capsys.readouterr().err
