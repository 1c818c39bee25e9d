"""Datasets, splits, the proxy builder and a smoke training run (tiny model, a few steps)."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pyfundus.api import load_model
from pyfundus.data.camera import Camera
from pyfundus.data.datasets import (
    PYFUNDUS_LEVELS,
    load_eyeq,
    load_folder_csv,
    load_fqs,
    split_records,
)
from pyfundus.data.degrade import BLUR_ALLOWANCE, DegradationRecord, replay
from pyfundus.data.proxy import BASE_QUALITY, Source, _load_source, build_proxy, proxy_mos
from pyfundus.train import TrainConfig, _camera_render, _rotated, train
from pyfundus.weights import load_weights

TINY = {"depths": [1, 1, 1, 1], "drop_path_rate": 0.1}


@pytest.fixture(scope="module")
def proxy_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("proxy")
    build_proxy([], out, synthetic=6, variants=3, seed=3, workers=2, progress=False)
    return out


def test_proxy_mos_definition():
    assert proxy_mos([]) == pytest.approx(100 * BASE_QUALITY)
    assert proxy_mos([0.5]) == pytest.approx(100 * BASE_QUALITY * 0.5)
    assert proxy_mos([0.5, 0.5]) == pytest.approx(100 * BASE_QUALITY * 0.25)
    assert proxy_mos([1.0, 0.1]) == 0.0


def test_proxy_layout_and_exact_regeneration(proxy_dir):
    records = load_fqs(proxy_dir / "labels.csv", proxy_dir / "images", level_names=PYFUNDUS_LEVELS)
    assert len(records) == 18 and len({r.source_id for r in records}) == 6
    for record in records:
        assert record.path.exists() and 0 <= record.mos <= 100 * BASE_QUALITY + 1e-6
        assert record.level in ("Good", "Usable", "Reject")
    # Every image regenerates bit-exactly from its source, its camera and its recorded draw.
    lines = [json.loads(line) for line in (proxy_dir / "degradations.jsonl").read_text().splitlines()]
    for line in lines[:6]:
        source = Source("x", synth_seed=line["source"]["synthetic_seed"])
        camera = Camera.from_dict(line["camera"])
        assert camera != Camera()
        rebuilt = replay(camera.render(_load_source(source)), DegradationRecord.from_json(json.dumps(line["record"])))
        on_disk = np.asarray(Image.open(proxy_dir / "images" / line["file_name"]))
        assert np.array_equal(rebuilt, on_disk)
        severities = [step["severity"] for step in line["record"]["steps"]]
        row = next(r for r in records if r.path.name == line["file_name"])
        assert row.mos == pytest.approx(proxy_mos(severities), abs=0.01)


def test_camera_keeps_black_and_stays_mild():
    clean = _load_source(Source("x", synth_seed=11))
    rng = np.random.default_rng(0)
    for _ in range(20):
        camera = dataclasses.replace(Camera.draw(rng), frame_cut=(0.0, 0.0))  # the frame is tested below
        rendered = camera.render(clean)
        assert np.array_equal(rendered[clean.max(axis=2) == 0], clean[clean.max(axis=2) == 0])
        inside = clean.max(axis=2) > 20
        ratio = rendered[inside].mean() / clean[inside].mean()
        assert 0.68 < ratio < 1.36  # a camera's rendering (its auto-exposure), not an exposure defect
        assert camera.softness <= BLUR_ALLOWANCE  # within what the blur labels allow a camera
    assert np.array_equal(Camera().render(clean), clean)
    assert Camera.from_dict(json.loads(json.dumps(camera.to_dict()))) == camera


def test_training_camera_render_keeps_the_fundus_and_cuts_a_sensor_frame():
    clean = _load_source(Source("x", synth_seed=11))
    outside = clean.max(axis=2) == 0
    framed = 0
    for seed in range(40):
        rendered = _camera_render(clean.copy(), np.random.default_rng(seed))
        assert np.array_equal(rendered, _camera_render(clean.copy(), np.random.default_rng(seed)))  # reproducible
        assert not rendered[outside].any()  # black stays black
        rows = rendered.max(axis=(1, 2)) > 0
        top, bottom = rows.argmax(), rows[::-1].argmax()
        assert rows[top : len(rows) - bottom].all()  # one band of image rows, the fundus kept in between
        if top > 0.05 * len(rows):
            framed += 1
            # nearly symmetric, as a sensor cuts it; an off-centre capture is a defect, not a look
            assert abs(int(top) - int(bottom)) <= 0.07 * len(rows)
    assert 8 <= framed <= 32


def test_rotation_turns_the_fundus_and_keeps_its_circle():
    clean = _load_source(Source("x", synth_seed=11))
    side = clean.shape[0]
    yy, xx = np.mgrid[:side, :side] - (side - 1) / 2.0
    inside = np.hypot(yy, xx) < 0.45 * side  # well inside the circle of view
    turned = [_rotated(clean, np.random.default_rng(seed)) for seed in range(6)]
    assert np.array_equal(turned[0], _rotated(clean, np.random.default_rng(0)))  # reproducible
    for image in turned:
        assert image.shape == clean.shape
        assert image[inside].max(axis=1).min() > 0  # no black enters the circle of view
        assert abs(image[inside].mean() - clean[inside].mean()) < 0.02 * clean[inside].mean()  # same exposure
        assert not np.array_equal(image, clean)  # the content moved
    # The optic disc (the brightest spot) ends up at different angles around the centre.
    def disc_angle(image: np.ndarray) -> float:
        y, x = np.array(np.unravel_index(image.sum(axis=2).argmax(), image.shape[:2])) - (side - 1) / 2.0
        return float(np.degrees(np.arctan2(y, x)))

    assert len({round(disc_angle(image) / 30) for image in turned}) >= 3


def test_clean_fraction_one_leaves_every_variant_undegraded(tmp_path):
    records = build_proxy([], tmp_path, synthetic=1, variants=3, clean_fraction=1.0, workers=1, progress=False)
    assert [r.mos for r in records] == pytest.approx([100 * BASE_QUALITY] * 3)
    assert {r.degradation for r in records} == {"none"}


def test_splits_are_image_level_and_reproducible(proxy_dir):
    records = load_fqs(proxy_dir / "labels.csv", proxy_dir / "images", level_names=PYFUNDUS_LEVELS)
    for protocol in ("paper", "kfold"):
        split = split_records(records, protocol=protocol, seed=1, round_index=1, folds=3)
        sides = [{r.source_id for r in split[name]} for name in ("train", "test", "val")]
        assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
        assert sum(len(split[n]) for n in split) == len(records)
        again = split_records(records, protocol=protocol, seed=1, round_index=1, folds=3)
        assert [r.path for r in again["test"]] == [r.path for r in split["test"]]
    folds = [split_records(records, protocol="kfold", round_index=i, folds=3)["test"] for i in range(3)]
    assert sorted(r.path for fold in folds for r in fold) == sorted(r.path for r in records)
    rounds = {tuple(sorted(r.source_id for r in split_records(records, round_index=i)["train"])) for i in range(5)}
    assert len(rounds) > 1  # rounds reshuffle


def test_label_table_loaders(tmp_path):
    (tmp_path / "fqs.csv").write_text("file_name,meanOpinionScore,qualityLevel\na.jpg,81,0\nb.jpg,12,2\n")
    fqs = load_fqs(tmp_path / "fqs.csv", tmp_path)
    assert [(r.path.name, r.mos, r.level) for r in fqs] == [("a.jpg", 81.0, None), ("b.jpg", 12.0, None)]
    named = load_fqs(tmp_path / "fqs.csv", tmp_path, level_names={0: "Good", 2: "Reject"})
    assert [r.level for r in named] == ["Good", "Reject"]
    (tmp_path / "eyeq.csv").write_text(",image,quality,DR_grade\n0,10_left.jpeg,0,0\n1,10_right.jpeg,2,1\n2,13_left.jpeg,1,0\n")
    eyeq = load_eyeq(tmp_path / "eyeq.csv", tmp_path)
    assert [r.level for r in eyeq] == ["Good", "Reject", "Usable"]
    assert eyeq[0].source_id == eyeq[1].source_id == "10" and eyeq[0].mos is None
    (tmp_path / "mine.csv").write_text("path,score,class\nx.png,55,Usable\n")
    assert load_folder_csv(tmp_path / "mine.csv")[0].level == "Usable"
    (tmp_path / "bad.csv").write_text("name,score\nx.png,1\n")
    with pytest.raises(ValueError, match="missing column"):
        load_fqs(tmp_path / "bad.csv", tmp_path)
    (tmp_path / "badclass.csv").write_text("path,score,class\nx.png,55,Great\n")
    with pytest.raises(ValueError, match="not one of"):
        load_folder_csv(tmp_path / "badclass.csv")


def smoke_config(proxy_dir, out, steps):
    return TrainConfig(
        data=[str(proxy_dir)], out=str(out), model_kwargs=TINY, steps=steps, batch_size=3, lr=1e-3,
        warmup_steps=2, eval_every=2, val_fraction=0.34, cause_weight=0.5, class_weight=0.2, seed=5,
        camera_looks=True, rotations=True,
    )  # fmt: skip


def test_smoke_training_resume_and_scoring(proxy_dir, tmp_path):
    straight = train(smoke_config(proxy_dir, tmp_path / "straight", 6), progress=False)
    train(smoke_config(proxy_dir, tmp_path / "resumed", 6), progress=False, stop_at=4)
    resumed = train(smoke_config(proxy_dir, tmp_path / "resumed", 6), resume=True, progress=False)

    # Resuming continues the same run: identical weights to training straight through.
    state_a, config_a = load_weights(straight)
    state_b, _ = load_weights(resumed)
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=0, msg=key)

    history = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert [h["step"] for h in history] == [2, 4, 6]
    assert all(np.isfinite(h["rmse"]) for h in history)
    assert config_a.trained and config_a.causes and config_a.arch_kwargs["num_causes"] == len(config_a.causes)
    assert config_a.training["config"]["steps"] == 6

    # The trained file is a usable model: scores, classes, causes and a reason for non-Good verdicts.
    model = load_model(straight)
    images = sorted((proxy_dir / "images").glob("*.png"))[:4]
    results = model.score(images)
    assert all(r.ok and r.trained and r.causes is not None for r in results)
    assert all((r.reason is None) == (r.quality_class == "Good") for r in results)


def test_init_from_weights_starts_there_and_refuses_other_shapes(proxy_dir, tmp_path):
    first = train(smoke_config(proxy_dir, tmp_path / "first", 2), progress=False)
    config = smoke_config(proxy_dir, tmp_path / "second", 2)
    config.init_from, config.lr = str(first), 0.0  # lr 0: the weights stay exactly where they started
    second = train(config, progress=False)
    state_a, _ = load_weights(first)
    state_b, _ = load_weights(second)
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=0, msg=key)
    other = smoke_config(proxy_dir, tmp_path / "third", 2)
    other.init_from, other.cause_weight = str(first), 0.0  # no cause head: the file does not fit
    with pytest.raises(ValueError, match="does not fit"):
        train(other, progress=False)


def test_resume_without_state_is_an_error(proxy_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(smoke_config(proxy_dir, tmp_path / "empty", 2), resume=True, progress=False)


def test_bad_config_values():
    with pytest.raises(ValueError, match="loss"):
        TrainConfig(data=["x"], loss="huber")
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(data=["x"], amp="fp8")
