"""`pyfundus score` and the Python scoring API, end to end on real and broken files."""

import csv
import io
import json
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from skimage import data as skdata

import pyfundus
import pyfundus.api
from pyfundus.api import UntrainedModelWarning, load_model
from pyfundus.cli import display_width, main
from pyfundus.errors import EXIT_NOTHING_SCORED, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE
from pyfundus.grading import Thresholds
from pyfundus.inputs import collect_inputs
from pyfundus.verdicts import ScoreResult
from pyfundus.weights import ModelConfig, load_weights, read_config, save_weights, shipped_weights

OPHTHALMIC_PHOTOGRAPHY_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"


def write_dicom(path, rgb, laterality="R", patient_id="PAT-001"):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = OPHTHALMIC_PHOTOGRAPHY_8BIT
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = OPHTHALMIC_PHOTOGRAPHY_8BIT
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.ImageLaterality = laterality
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(rgb).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def retina():
    return skdata.retina()


@pytest.fixture(scope="module")
def captures(tmp_path_factory, retina):
    """A camera-like folder: a real photo, a DICOM, a corrupt JPEG, a file of unknown content, a blank
    frame, and what sits beside captures: a text note, a metadata export, Thumbs.db, a hidden file."""
    folder = tmp_path_factory.mktemp("captures")
    Image.fromarray(retina).save(folder / "a_retina.jpg", quality=92)
    write_dicom(folder / "b_capture.dcm", retina[::2, ::2])
    good = (folder / "a_retina.jpg").read_bytes()
    (folder / "c_truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "d_export.dat").write_bytes(b"\x00\x01 camera export of unknown format")
    Image.fromarray(np.zeros((600, 800, 3), np.uint8)).save(folder / "e_blank.png")
    (folder / "notes.txt").write_text("patient was blinking\n")
    (folder / "session.xml").write_text("<session/>\n")
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 thumbnail cache")
    (folder / ".hidden.jpg").write_bytes(good)
    return folder


@pytest.fixture(scope="module")
def model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedModelWarning)
        return load_model("fthnet_s", pretrained=False)


def run_cli(*args):
    out, err = io.StringIO(), io.StringIO()
    sys_stdout, sys_stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        code = main(list(args))
    finally:
        sys.stdout, sys.stderr = sys_stdout, sys_stderr
    return code, out.getvalue(), err.getvalue()


def test_score_folder_json(captures):
    code, out, err = run_cli("score", str(captures), "--json", "--no-progress")
    assert code == EXIT_SOME_FAILED  # three files could not be scored, and their records say why
    records = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(out)}
    # The note, the metadata export, Thumbs.db and the hidden file are skipped quietly, and counted.
    assert sorted(records) == ["a_retina.jpg", "b_capture.dcm", "c_truncated.jpg", "d_export.dat", "e_blank.png"]
    assert "pyfundus: 2 scored, 3 failed, 4 skipped (not captures); fthnet_s: Reject below" in err
    for name in ("a_retina.jpg", "b_capture.dcm"):
        record = records[name]
        assert record["error"] is None
        assert 0 <= record["score"] <= 100
        assert record["class"] in ("Good", "Usable", "Reject")
        assert abs(sum(record["probabilities"].values()) - 1) < 1e-6
        assert {"path", "score", "class", "probabilities", "error"} <= set(record)
    assert records["b_capture.dcm"]["eye"] == "R"
    assert records["b_capture.dcm"]["patient_id"] == "PAT-001"
    assert "truncated" in records["c_truncated.jpg"]["error"]
    assert "c_truncated.jpg" in records["c_truncated.jpg"]["error"]
    assert "not an image" in records["d_export.dat"]["error"]
    assert "e_blank.png" in records["e_blank.png"]["error"]
    for name in ("c_truncated.jpg", "d_export.dat", "e_blank.png"):
        assert records[name]["score"] is None and records[name]["class"] is None
    # The default model is the shipped, trained one.
    assert records["a_retina.jpg"]["trained"] is True and records["a_retina.jpg"]["warnings"] == []
    assert "no trained weights" not in err


def test_a_model_without_weights_says_so_in_the_output_and_on_stderr(captures):
    code, out, err = run_cli("score", str(captures / "a_retina.jpg"), "--model", "fthnet_l", "--json", "--no-progress")
    assert code == 0
    [record] = json.loads(out)
    assert record["trained"] is False and "untrained" in " ".join(record["warnings"])
    assert "no trained weights" in err


def test_score_csv_and_table(captures):
    # A file named on the command line is always read, whatever its name: asking for it asks for its verdict.
    code, out, _ = run_cli("score", str(captures / "a_retina.jpg"), str(captures / "notes.txt"), "--csv")
    assert code == EXIT_SOME_FAILED
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["path"].rsplit("/", 1)[-1] for r in rows] == ["a_retina.jpg", "notes.txt"]
    assert float(rows[0]["score"]) >= 0 and rows[0]["error"] == ""
    assert rows[1]["score"] == "" and "not an image" in rows[1]["error"]

    code, out, _ = run_cli("score", str(captures / "a_retina.jpg"))
    assert code == EXIT_OK
    assert out.splitlines()[0].split()[:3] == ["path", "score", "class"]
    assert "a_retina.jpg" in out.splitlines()[1]


def test_globs_missing_paths_and_identical_results(captures):
    code, out, err = run_cli("score", str(captures / "*.jpg"), str(captures / "missing.jpg"), "--json")
    assert code == EXIT_NOTHING_SCORED  # a named input is missing: a nightly job must not look fine
    records = json.loads(out)
    names = [r["path"].rsplit("/", 1)[-1] for r in records]
    assert names == ["a_retina.jpg", "c_truncated.jpg", "missing.jpg"]
    assert "no such file" in records[-1]["error"]
    assert f"pyfundus: {captures / 'missing.jpg'}: no such file or directory" in err
    # The CLI and the Python API give the same number for the same file.
    api_score = load_model().score(str(captures / "a_retina.jpg"))[0].score
    assert records[0]["score"] == pytest.approx(api_score, abs=1e-3)


def test_exit_status_3_when_there_is_nothing_to_score_or_nothing_was_scored(tmp_path, captures):
    empty = tmp_path / "unmounted-share"
    empty.mkdir()
    code, out, err = run_cli("score", str(empty))
    assert code == EXIT_NOTHING_SCORED
    assert f"{empty}: no files in this folder" in out and f"pyfundus: {empty}: no files in this folder" in err
    assert "0 scored, 0 failed, 0 skipped" in err

    code, _, err = run_cli("score", str(tmp_path / "nowhere"), "--json")
    assert code == EXIT_NOTHING_SCORED and "no such file or directory" in err

    code, _, err = run_cli("score", str(tmp_path / "*.jpg"), "--csv")
    assert code == EXIT_NOTHING_SCORED and "no files match this pattern" in err

    only_metadata = tmp_path / "export"
    only_metadata.mkdir()
    (only_metadata / "manifest.json").write_text("[]")
    code, _, err = run_cli("score", str(only_metadata))
    assert code == EXIT_NOTHING_SCORED
    assert "no captures in this folder: 1 other file(s) skipped (manifest.json)" in err

    # Every file failed: nothing scored, whatever the other inputs were.
    code, _, err = run_cli("score", str(captures / "c_truncated.jpg"), str(captures / "d_export.dat"))
    assert code == EXIT_NOTHING_SCORED and "0 scored, 2 failed" in err

    # One input with nothing to score outweighs the others being fine.
    code, _, _ = run_cli("score", str(captures / "a_retina.jpg"), str(empty))
    assert code == EXIT_NOTHING_SCORED


def test_usage_errors_exit_nonzero(tmp_path):
    assert run_cli("score", "x.jpg", "--model", str(tmp_path / "nope.safetensors"))[0] == EXIT_USAGE
    with pytest.raises(SystemExit) as exit_info:
        run_cli("score")  # no PATH
    assert exit_info.value.code == 2
    pickle_file = tmp_path / "weights.pt"
    pickle_file.write_bytes(b"not safetensors")
    code, _, err = run_cli("score", "x.jpg", "--model", str(pickle_file))
    assert code == 2 and "only .safetensors" in err
    code, _, err = run_cli("score", "x.jpg", "--backend", "onnxruntime", "--compile")
    assert code == 2 and "compile applies to the torch backend" in err


def test_collect_inputs_recursive(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "sub" / "b.jpg").write_bytes(b"x")
    flat = collect_inputs([str(tmp_path)]).files
    deep = collect_inputs([str(tmp_path)], recursive=True).files
    assert [p.rsplit("/", 1)[-1] for p in flat] == ["a.jpg"]
    assert [p.rsplit("/", 1)[-1] for p in deep] == ["a.jpg", "b.jpg"]


def test_non_captures_are_skipped_by_name_unless_their_content_is_an_image(tmp_path, retina):
    Image.fromarray(retina).save(tmp_path / "really_a_photo.txt", format="JPEG")  # mis-named by a script
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "README.TXT").write_text("upper case is the same name")
    (tmp_path / "broken.jpg").write_bytes(b"image extension: never skipped, even when it is no image")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    inputs = collect_inputs([str(tmp_path)])
    assert [p.rsplit("/", 1)[-1] for p in inputs.files] == ["broken.jpg", "really_a_photo.txt"]
    assert sorted(p.rsplit("/", 1)[-1] for p in inputs.skipped) == [".DS_Store", "README.TXT", "manifest.json"]
    # A pattern skips them too; a file named on its own is always kept.
    assert collect_inputs([str(tmp_path / "*.json")]).nothing_found[0][1].startswith("no captures match")
    assert collect_inputs([str(tmp_path / "manifest.json")]).files == [str(tmp_path / "manifest.json")]


def test_the_table_aligns_wide_file_names_by_display_width(tmp_path, retina):
    names = ("\u773c\u5e95_\u5de6\u773c.jpg", "a.jpg", "e\u0301.jpg")  # CJK: two columns each; e + combining accent: one
    for name in names:
        Image.fromarray(retina[::4, ::4]).save(tmp_path / name)
    code, out, _ = run_cli("score", str(tmp_path), "--no-progress")
    assert code == EXIT_OK
    header, *rows = out.splitlines()
    score_ends = {display_width(header[: header.index("score") + len("score")])}
    for row in rows:
        path = next(str(tmp_path / name) for name in names if row.startswith(str(tmp_path / name) + " "))
        score_ends.add(display_width(path) + re.match(r" +\d+\.\d", row[len(path) :]).end())
    assert len(score_ends) == 1, out  # the score column ends in the same terminal column on every line
    assert display_width("\u773c\u5e95") == 4 and display_width("e\u0301") == 1


def test_api_accepts_arrays_and_warns_every_call(model, retina):
    for _ in range(2):
        with pytest.warns(UntrainedModelWarning):
            (result,) = model.score(retina)
    assert isinstance(result, ScoreResult) and result.ok and result.path is None
    assert set(result.timing_ms) >= {"read", "preprocess", "model", "total"}
    with pytest.warns(UntrainedModelWarning):
        many = model.score([retina, np.zeros((300, 300, 3), np.uint8), retina], batch_size=2)
    assert [r.ok for r in many] == [True, False, True]
    assert many[0].score == pytest.approx(many[2].score, abs=1e-3)


def test_one_capture_is_read_in_the_calling_thread(monkeypatch, retina):
    pools = []
    real_pool = pyfundus.api.ThreadPoolExecutor
    monkeypatch.setattr(pyfundus.api, "ThreadPoolExecutor", lambda *a, **k: pools.append(1) or real_pool(*a, **k))
    model = load_model()
    (one,) = model.score(retina)  # the daemon's usual call: nothing to overlap, so no reader thread
    assert one.ok and pools == []
    many = model.score([retina, retina], batch_size=1)
    assert pools == [1] and many[0].score == pytest.approx(one.score, abs=1e-3)


def test_weights_round_trip_and_thresholds(tmp_path, model, retina):
    config = ModelConfig(arch="fthnet_s", thresholds=Thresholds(30, 60, calibrated=True), trained=True)
    path = save_weights(model.network, tmp_path / "m.safetensors", config)
    _, read_back = load_weights(path)
    assert read_back.thresholds == config.thresholds and read_back.trained
    reloaded = load_model(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedModelWarning)  # trained: no warning
        (result,) = reloaded.score(retina)
    assert result.trained and result.warnings == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedModelWarning)
        (original,) = model.score(retina)
    assert result.score == pytest.approx(original.score, abs=1e-3)
    assert result.quality_class == Thresholds(30, 60).classify(result.score)


def test_thresholds_and_probabilities_agree():
    t = Thresholds(reject_below=40, good_from=70)
    for score in np.arange(0.25, 100, 0.5):  # off the thresholds, where two classes tie
        probs = t.probabilities(float(score))
        assert abs(sum(probs.values()) - 1) < 1e-9
        assert max(probs, key=probs.get) == t.classify(float(score))
    assert t.classify(39.99) == "Reject" and t.classify(40) == "Usable" and t.classify(70) == "Good"
    with pytest.raises(ValueError):
        Thresholds(reject_below=70, good_from=40)


def test_installed_console_script(captures):
    completed = subprocess.run(
        [sys.executable, "-m", "pyfundus.cli", "score", str(captures / "a_retina.jpg"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(completed.stdout)[0]["error"] is None
    missing = subprocess.run([sys.executable, "-m", "pyfundus.cli", "score", str(captures / "gone")], capture_output=True)
    assert missing.returncode == EXIT_NOTHING_SCORED  # what a shell script sees
    assert pyfundus.__version__ in subprocess.run(
        ["pyfundus", "--version"], capture_output=True, text=True, check=True
    ).stdout


def test_score_help_states_the_shipped_models_thresholds_read_from_its_header_alone():
    shipped = load_weights(shipped_weights())[1].thresholds  # the reference: the whole file, tensors and all
    probe = (
        "import sys\n"
        "from pyfundus.cli import main\n"
        "try:\n    main(['score', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    text = " ".join(done.stdout.split())  # argparse wraps lines
    assert text.endswith("torch imported: False")  # no model was loaded to say it
    assert f"(the shipped model's: {shipped.describe()})" in text
    assert f"the shipped model's: {shipped.reject_below:g})" in text and f"the shipped model's: {shipped.good_from:g})" in text
    assert "exit status: 0 every input scored" in text


def test_read_config_reads_the_header_only_and_names_a_bad_file(tmp_path):
    assert read_config(shipped_weights()) == load_weights(shipped_weights())[1]
    for name, content in (("empty.safetensors", b""), ("junk.safetensors", b"\x10\0\0\0\0\0\0\0not json at all!")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=name):
            read_config(tmp_path / name)


def test_every_place_that_states_the_shipped_thresholds_states_the_ones_in_the_weights():
    """The README and the model card quote the thresholds in force; they must be the weights file's, not older ones."""
    from pathlib import Path

    shipped = read_config(shipped_weights()).thresholds
    root = Path(__file__).resolve().parent.parent
    readme, card = (root / "README.md").read_text(), (root / "MODEL_CARD.md").read_text()
    stated = [
        (f"fthnet_s: {shipped.describe()}", readme),  # the score example's last line
        (f"current: Reject below {shipped.reject_below:5.1f}, Good from {shipped.good_from:5.1f}", readme),
        (f"Good from **{shipped.good_from:.1f}**, Reject below **{shipped.reject_below:.1f}**", card),
    ]
    for text, document in stated:
        assert text in document, text
    default = Thresholds()  # what a model file without thresholds grades with, as "How a verdict is made" says
    assert f"grades with {default.reject_below:g} and {default.good_from:g}" in " ".join(readme.split())
    assert not default.calibrated and "marked not calibrated" in " ".join(readme.split())


@pytest.mark.parametrize(
    "argv, statuses",
    [
        (["score"], ("0 every input scored", "1 some inputs could not be scored", "3 nothing to score")),
        (["calibrate"], ("0 thresholds fitted", "1 fitted from the others", "3 a graded path gives no capture")),
        (["adapt"], ("0 site model written", "3 a --good/--usable/--reject path gives no capture", "4 refused")),
        (["watch"], ("0 stopped by SIGTERM or Ctrl-C", "2 could not start")),
        (["demo"], ("0 every capture got its verdict", "1 a capture got none")),
        (["data", "fetch-samples"], ("0 fetched", "1 the fetch failed, and nothing was changed")),
    ],
)
def test_each_commands_help_gives_its_exit_statuses(argv, statuses, capsys):
    """README's table of exit statuses, where a script's author looks first: the command's --help."""
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "exit status: " in text
    for status in statuses:
        assert status in text, status


def test_a_file_name_cannot_print_a_table_line_of_its_own(tmp_path, capsys):
    """As on the daemon's stdout: control characters in a name are shown escaped, not obeyed."""
    forged = tmp_path / "a\n2026-12-02  FORGED.jpg   95.0  Good\rb.jpg"
    forged.write_bytes(b"not an image")
    assert main(["score", str(forged), "--no-progress"]) == EXIT_NOTHING_SCORED
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "\\n2026-12-02  FORGED.jpg" in lines[1] and "\\rb.jpg" in lines[1], lines
