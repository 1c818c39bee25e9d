"""pyfundus adapt: a site model from a site's own captures, with provenance, resume and refusal.

A tiny FTHNet (one block per stage, 8 channels: 2.4 M parameters) stands in for the shipped model
where the test is about the mechanics, so CI trains real steps in seconds; the refusal test uses
the shipped model, which has something to lose.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from pyfundus.adapt import AdaptConfig, AdaptRefused, adapt, read_captures
from pyfundus.cli import main
from pyfundus.data.synth import generate_fundus
from pyfundus.errors import EXIT_NOTHING_SCORED, EXIT_REFUSED
from pyfundus.grading import Thresholds
from pyfundus.models import create_model
from pyfundus.verdicts import CAUSES
from pyfundus.weights import ModelConfig, load_weights, save_weights

TINY = {"embed_dim": 8, "depths": (1, 1, 1, 1), "num_causes": len(CAUSES)}
PATIENT = "Doe_Jane_1957-03-04_OD"  # must never reach the model file


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    network = create_model("fthnet_s", **TINY)
    config = ModelConfig(arch="fthnet_s", arch_kwargs=TINY, input=network.input_spec, trained=True,
                         causes=list(CAUSES), thresholds=Thresholds(40, 70, calibrated=True))  # fmt: skip
    return save_weights(network, tmp_path_factory.mktemp("base") / "tiny.safetensors", config)


@pytest.fixture(scope="module")
def site_captures(tmp_path_factory):
    """Two good captures from one camera (JPEG with EXIF Make/Model), named as clinics name them, and a Reject."""
    folder = tmp_path_factory.mktemp("site")
    paths = []
    for seed in (3, 4):
        rgb, _ = generate_fundus(seed, size=256)
        exif = Image.Exif()
        exif[0x010F], exif[0x0110] = "Acme Optics", "FundusCam 9"
        path = folder / f"{PATIENT}_{seed}.jpg"
        Image.fromarray(rgb).save(path, quality=92, exif=exif)
        paths.append(path)
    dark = (generate_fundus(5, size=256)[0] * 0.15).astype(np.uint8)
    reject = folder / f"{PATIENT}_dark.png"
    Image.fromarray(dark).save(reject)
    return {"Good": paths, "Reject": [reject]}


def small(out, base, **overrides) -> AdaptConfig:
    settings = dict(out=str(out), base=str(base), steps=4, batch_size=4, variants=8, eval_variants=3, minutes=30.0,
                    force=True)  # fmt: skip
    return AdaptConfig(**{**settings, **overrides})


def test_captures_are_read_once_by_content_with_their_camera(site_captures):
    graded = {"Good": site_captures["Good"] + site_captures["Good"][:1], "Reject": site_captures["Reject"]}
    captures = read_captures(graded)
    assert len(captures) == 3  # the repeated capture counts once
    good = [c for c in captures if c.level == "Good"]
    assert {c.camera for c in good} == {"Acme Optics FundusCam 9"}
    assert {c.sha256 for c in good} == {hashlib.sha256(p.read_bytes()).hexdigest() for p in site_captures["Good"]}
    assert all(c.square.shape == (512, 512, 3) for c in captures)


def test_site_model_carries_provenance_and_no_file_names(tmp_path, tiny_base, site_captures, capsys):
    out = tmp_path / "site.safetensors"
    argv = ["adapt", "--good", *map(str, site_captures["Good"]), "--reject", *map(str, site_captures["Reject"]),
            "--model", str(tiny_base), "--out", str(out), "--steps", "3", "--variants", "8", "--force", "--json",
            "--no-progress"]  # fmt: skip
    code = main(argv)
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and out.exists() and report["out"] == str(out)
    _, config = load_weights(out)
    record = config.training["adapt"]
    assert record["camera"] == "Acme Optics FundusCam 9" and record["steps"] == 3
    assert record["base_sha256"] == hashlib.sha256(tiny_base.read_bytes()).hexdigest()
    all_paths = site_captures["Good"] + site_captures["Reject"]
    assert sorted(record["capture_sha256"]) == sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in all_paths)
    assert record["captures"] == {"good": 2, "held_back": 0, "usable": 0, "reject": 1}
    assert set(record["before"]) == set(record["after"]) >= {"clean_good_or_usable", "severe_reject", "qwk"}
    assert (config.thresholds.reject_below, config.thresholds.good_from) == tuple(record["thresholds"].values())
    raw = out.read_bytes()
    header = raw[8 : 8 + int.from_bytes(raw[:8], "little")]  # the safetensors header: every text in the file
    for leak in (PATIENT, "Doe", "Jane", str(tmp_path), site_captures["Good"][0].parent.name, ".jpg", ".png"):
        assert leak.encode() not in header, leak
    assert PATIENT.encode() not in raw  # (short strings turn up by chance in megabytes of float data)
    assert config.input == load_weights(tiny_base)[1].input  # the base's input contract travels with it


def test_resume_ends_with_the_same_weights_bit_for_bit(tmp_path, tiny_base, site_captures):
    captures = read_captures(site_captures)
    whole = adapt(captures, small(tmp_path / "whole.safetensors", tiny_base, work_dir=str(tmp_path / "w1")),
                  progress=False)  # fmt: skip
    config = small(tmp_path / "parts.safetensors", tiny_base, work_dir=str(tmp_path / "w2"))
    stopped = adapt(captures, config, stop_at=2, progress=False)
    assert stopped["stopped_at"] == 2 and not (tmp_path / "parts.safetensors").exists()
    resumed = adapt(captures, config, resume=True, progress=False)
    assert whole["steps"] == resumed["steps"] == 4
    with safe_open(str(tmp_path / "whole.safetensors"), "pt") as a, safe_open(str(tmp_path / "parts.safetensors"), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for key in a.keys():
            assert a.get_tensor(key).equal(b.get_tensor(key)), key
    changed = small(tmp_path / "other.safetensors", tiny_base, work_dir=str(tmp_path / "w2"), lr=AdaptConfig.lr * 2)
    with pytest.raises(ValueError, match="other captures, base model or settings"):
        adapt(captures, changed, resume=True, progress=False)


def test_the_time_budget_ends_training_early_when_the_machine_is_slower_than_planned(tmp_path, tiny_base, site_captures):
    said = []
    report = adapt(read_captures(site_captures), small(tmp_path / "site.safetensors", tiny_base, steps=500,
                   minutes=0.02), progress=False, say=said.append)  # fmt: skip
    assert report["steps"] < 500 and (tmp_path / "site.safetensors").exists()
    assert any("budget ran out at step" in line for line in said), said


def test_a_model_that_checks_worse_is_not_written(tmp_path, site_captures):
    """The shipped model, wrecked by a learning rate thousands of times too high, grades worse than itself."""
    out = tmp_path / "wrecked.safetensors"
    config = AdaptConfig(out=str(out), steps=2, batch_size=4, lr=0.5, replay=0.0, variants=6, eval_variants=4)
    captures = read_captures(site_captures)
    with pytest.raises(AdaptRefused) as refused:
        adapt(captures, config, progress=False)
    report = json.loads(str(refused.value))
    assert report["worse_than_base"] is True and report["after"]["qwk"] < report["before"]["qwk"]
    assert not out.exists()
    config.force = True
    written = adapt(captures, config, progress=False)
    assert written["worse_than_base"] is True and out.exists()  # --force writes it, and says it is worse


def test_the_command_exits_4_and_writes_nothing_when_refused(tmp_path, tiny_base, site_captures, monkeypatch, capsys):
    from pyfundus import adapt as adapt_module

    verdicts = iter([{"qwk": 0.5, "srcc": 0.5}, {"qwk": 0.4, "srcc": 0.9}])  # before, after
    monkeypatch.setattr(adapt_module, "_evaluate", lambda *a, **k: next(verdicts))
    out = tmp_path / "x.safetensors"
    argv = ["adapt", "--good", *map(str, site_captures["Good"]), "--model", str(tiny_base), "--out", str(out),
            "--steps", "2", "--variants", "4", "--json", "--no-progress"]  # fmt: skip
    assert main(argv) == EXIT_REFUSED == 4 and not out.exists()
    assert json.loads(capsys.readouterr().out)["worse_than_base"] is True


def test_adapt_needs_a_good_capture(tmp_path, tiny_base, site_captures, capsys):
    assert main(["adapt", "--reject", str(site_captures["Reject"][0]), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "at least one capture the site judges good" in capsys.readouterr().err
    missing = tmp_path / "good-captures"
    assert main(["adapt", "--good", str(missing), "--out", str(tmp_path / "x.safetensors")]) == EXIT_NOTHING_SCORED
    assert f"{missing} (--good): no such file or directory" in capsys.readouterr().err
    with pytest.raises(ValueError, match="tune must be"):
        AdaptConfig(out="x", tune="everything")


def test_camera_key_from_exif_is_read_without_decoding_twice():
    """A JPEG's EXIF Make/Model names its camera; a file without them is "unknown"."""
    from pyfundus.io import read_image

    rgb, _ = generate_fundus(1, size=200)
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "Canon CR-2 AF"
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", exif=exif)
    assert read_image(buffer.getvalue()).camera == "Canon CR-2 AF"
    plain = io.BytesIO()
    Image.fromarray(rgb).save(plain, format="PNG")
    assert read_image(plain.getvalue()).camera == "unknown"


def test_the_site_adaptation_check_reports_before_after_and_the_peer_on_fresh_captures(tmp_path, tiny_base, capsys):
    """scripts/site_adaptation_check.py, the issue's leave-one-camera-out check, end to end on a tiny base."""
    from script_helpers import load_script

    photos = []
    for seed in (6, 7):
        path = tmp_path / f"photo{seed}.png"
        Image.fromarray(generate_fundus(seed, size=256)[0]).save(path)
        photos.append(path)
    check = load_script("site_adaptation_check")
    out = tmp_path / "loco"
    assert check.main(["--adapt-on", str(photos[0]), "--test-on", str(photos[1]), "--out", str(out), "--model",
                       str(tiny_base), "--steps", "2", "--variants", "12", "--test-captures", "10", "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((out / "report.json").read_text())
    assert report["optimistic"] is False and report["adapt"]["steps"] == 2
    for column in ("base", "adapted", "brisque"):
        assert report[column]["n_scored"] == 10 and report[column]["clean"] >= 1, column
        assert -1 <= report[column]["srcc"] <= 1 and 0 <= report[column]["clean_good_or_usable"] <= 1
    assert report["base"]["thresholds"] == [40.0, 70.0]  # the tiny base's, then adapt's refit ones
    assert report["adapted_meets_targets"] == all(report["adapted"][k] >= v for k, v in check.TARGETS.items())


def test_the_command_s_defaults_are_adapt_config_s():
    """The CLI writes its defaults out (so --help needs no torch); they must be the ones AdaptConfig uses."""
    from pyfundus.cli import build_parser

    args = build_parser().parse_args(["adapt", "--good", "x.jpg", "--out", "site.safetensors"])
    defaults = AdaptConfig(out="site.safetensors")
    assert (args.tune, args.lr, args.steps, args.variants, args.replay, args.minutes) == (
        defaults.tune, defaults.lr, defaults.steps, defaults.variants, defaults.replay, defaults.minutes)
