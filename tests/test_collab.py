"""CLEAQ-DR training (pyfundus.collab, pyfundus train --task): every task trains on tiny data, resumes exactly,
takes a user's own backbone weights, and its files load through the public loaders."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from pyfundus.cli import main
from pyfundus.collab import CleaqTrainConfig, TaskWeights, poly_lr_factor, train_cleaq
from pyfundus.data.cleaq import build_pairs
from pyfundus.models.resnet import resnet50

TINY = {"img_size": 32, "width": 0.125, "batch_size": 2, "eval_every": 1, "val_fraction": 0.34}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    build_pairs([], folder, synthetic=3, variants=2, dr_proxy=True, workers=1, progress=False)
    return str(folder)


def test_poly_decay_after_a_constant_phase():
    assert poly_lr_factor(0, 100, 0.4, 0.9) == 1.0 and poly_lr_factor(39, 100, 0.4, 0.9) == 1.0
    assert poly_lr_factor(40, 100, 0.4, 0.9) == 1.0
    assert poly_lr_factor(70, 100, 0.4, 0.9) == pytest.approx(0.5**0.9)
    assert poly_lr_factor(100, 100, 0.4, 0.9) == 0.0


def test_dynamic_task_weights_follow_each_loss_against_its_first():
    weights = TaskWeights()
    first = weights({"dr": torch.tensor(2.0), "iqe": torch.tensor(0.5), "iqa": torch.tensor(1.0)})
    assert first == {"dr": 1.0, "iqe": 1.0, "iqa": 1.0}
    later = weights({"dr": torch.tensor(0.1), "iqe": torch.tensor(0.25), "iqa": torch.tensor(30.0)})
    assert later == {"dr": 1.0, "iqe": 0.5, "iqa": 10.0}  # halved; risen 30x, capped at 10
    assert TaskWeights(enabled=False)({"iqe": torch.tensor(3.0)}) == {"iqe": 1.0}


@pytest.mark.parametrize("task", ["iqe", "iqa", "dr", "joint"])
def test_each_task_trains_and_saves_a_loadable_model(task, pairs, tmp_path):
    out = train_cleaq(CleaqTrainConfig(task=task, data=[pairs], out=str(tmp_path), steps=1, **TINY), progress=False)
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert len(history) == 1 and history[0]["step"] == 1
    import pyfundus

    if task == "iqe":
        assert {"val_psnr", "val_ssim"} <= set(history[0])
        assert pyfundus.load_enhancer(out).trained
    elif task == "iqa":
        assert "val_quality_kappa" in history[0]
    else:
        grader = pyfundus.load_grader(out)
        assert grader.grades == ["none", "mild", "moderate", "severe"]
    if task == "joint":
        assert {"loss_iqe", "loss_iqa", "loss_dr", "weight_iqe", "weight_iqa"} <= set(history[0])
        assert pyfundus.load_enhancer(tmp_path / "enhancer.safetensors").trained


def test_a_resumed_run_ends_with_the_same_weights(pairs, tmp_path):
    def config(out):
        return CleaqTrainConfig(task="iqe", data=[pairs], out=str(out), steps=2, **TINY)

    straight = train_cleaq(config(tmp_path / "straight"), progress=False)
    assert train_cleaq(config(tmp_path / "split"), progress=False, stop_at=1).name == "state.safetensors"
    resumed = train_cleaq(config(tmp_path / "split"), progress=False, resume=True)
    a, b = load_file(straight), load_file(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_init_takes_a_users_own_resnet_weights_for_the_backbone(pairs, tmp_path):
    torch.manual_seed(3)
    backbone = resnet50(0.125)
    user = {**backbone.state_dict(), "fc.weight": torch.zeros(1000, backbone.num_features)}  # torchvision keeps an fc
    save_file({k: v.contiguous() for k, v in user.items()}, tmp_path / "r50.safetensors")
    config = CleaqTrainConfig(task="dr", data=[pairs], out=str(tmp_path / "run"), steps=1, lr=0.0,
                              init={"dr": str(tmp_path / "r50.safetensors")}, **TINY)  # fmt: skip
    trained = load_file(train_cleaq(config, progress=False))
    assert torch.equal(trained["dr.backbone.layer2.0.conv2.weight"], user["layer2.0.conv2.weight"])
    with pytest.raises(ValueError, match="no iqe part"):
        train_cleaq(CleaqTrainConfig(task="dr", data=[pairs], out=str(tmp_path / "bad"), steps=1,
                                     init={"iqe": str(tmp_path / "r50.safetensors")}, **TINY), progress=False)  # fmt: skip


def test_cli_trains_a_task_and_refuses_dr_without_grades(pairs, tmp_path, capsys):
    args = ["train", "--task", "iqa", "--data", pairs, "--out", str(tmp_path / "iqa"), "--img-size", "32", "--width",
            "0.125", "--steps", "1", "--batch-size", "2", "--val-fraction", "0.34", "--no-progress", "--no-lqi"]  # fmt: skip
    assert main(args) == 0
    assert capsys.readouterr().out.strip().endswith("model.safetensors")
    pairs_without_grades = tmp_path / "plain"
    build_pairs([], pairs_without_grades, synthetic=2, variants=1, workers=1, progress=False)
    assert main(["train", "--task", "dr", "--data", str(pairs_without_grades), "--out", str(tmp_path / "dr"),
                 "--no-progress"]) == 2  # fmt: skip
    assert "DR grades" in capsys.readouterr().err
