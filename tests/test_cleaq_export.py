"""ONNX exports of the enhancer and the grader: standard ONNX, dynamic batch, ONNX Runtime agreeing with torch,
and loadable by load_enhancer / load_grader on their own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_helpers import export_extra, parity_samples

import pyfundus
from pyfundus.cli import main
from pyfundus.collab import CleaqTrainConfig, train_cleaq
from pyfundus.data.cleaq import build_pairs
from pyfundus.export.onnx import STANDARD_DOMAINS, read_metadata
from pyfundus.io import read_image
from pyfundus.preprocess import preprocess
from pyfundus.weights import InputSpec

onnx = export_extra("onnx")
ort = export_extra("onnxruntime")

TINY = {"img_size": 32, "width": 0.125, "batch_size": 2, "eval_every": 2, "val_fraction": 0.34, "steps": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A briefly trained joint model (its enhancer's correction is no longer zero) and its enhancer."""
    folder = tmp_path_factory.mktemp("cleaq-export")
    build_pairs([], folder / "pairs", synthetic=3, variants=2, dr_proxy=True, workers=1, progress=False)
    grader = train_cleaq(CleaqTrainConfig(task="joint", data=[str(folder / "pairs")], out=str(folder / "joint"), **TINY),
                         progress=False)  # fmt: skip
    return {"grader": grader, "enhancer": folder / "joint" / "enhancer.safetensors", "folder": folder}


def _photos(size: int) -> torch.Tensor:
    """The real parity photos as the enhancer and the grader take them: [0, 1] RGB (mean 0, std 1)."""
    unit = InputSpec(size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return torch.from_numpy(np.stack([preprocess(read_image(p, min_side=size).pixels, unit)[0] for p in parity_samples()]))


def _check_onnx(path, outputs: list[str]) -> None:
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    assert {node.domain for node in proto.graph.node} <= set(STANDARD_DOMAINS)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert [o.name for o in proto.graph.output] == outputs


def test_enhancer_onnx_matches_torch_on_real_photos(trained, tmp_path):
    output = tmp_path / "enhancer.onnx"
    assert main(["export", "--format", "onnx", "--model", str(trained["enhancer"]), "--output", str(output)]) == 0
    _check_onnx(output, ["enhanced"])
    assert read_metadata(output)["model"] == "enhancer"
    torch_enhancer = pyfundus.load_enhancer(trained["enhancer"])
    batch = _photos(torch_enhancer.input.size)
    expected = torch_enhancer.network.forward_with_heads(batch)["enhanced"].detach().numpy()
    assert np.abs(expected - batch.numpy()).max() > 1e-3  # a real correction, not the identity
    got = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"]).run(None, {"images": batch.numpy()})[0]
    assert np.abs(got - expected).max() < 1e-4
    onnx_enhancer = pyfundus.load_enhancer(output)
    photo = read_image(parity_samples()[1]).pixels
    difference = onnx_enhancer.enhance_array(photo).astype(int) - torch_enhancer.enhance_array(photo).astype(int)
    assert np.abs(difference).max() <= 1  # one grey level of rounding at most


def test_grader_onnx_matches_torch(trained, tmp_path):
    output = tmp_path / "grader.onnx"
    assert main(["export", "--format", "onnx", "--model", str(trained["grader"]), "--output", str(output)]) == 0
    _check_onnx(output, ["dr_logits", "enhanced", "vessel_logits", "quality_logits", "reconstruction"])
    torch_grader = pyfundus.load_grader(trained["grader"])
    batch = _photos(torch_grader.config.input.size)
    expected = torch_grader.network.forward_with_heads(batch)["dr_logits"].detach().numpy()
    got = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"]).run(["dr_logits"], {"images": batch.numpy()})[0]
    assert np.abs(got - expected).max() < 1e-3
    onnx_grader = pyfundus.load_grader(output)
    paths = [str(p) for p in parity_samples()]
    assert [r.grade for r in onnx_grader.grade(paths)] == [r.grade for r in torch_grader.grade(paths)]


def test_grade_cli_grades_with_a_trained_grader_as_json(trained, capsys):
    import json

    paths = [str(p) for p in parity_samples()]
    assert main(["grade", *paths, "--model", str(trained["grader"]), "--json", "--no-progress"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in records] == paths and all(r["error"] is None for r in records)
    first = records[0]
    assert first["grade_name"] in first["probabilities"] and abs(sum(first["probabilities"].values()) - 1) < 1e-3
    assert first["quality"] in ("Good", "Usable", "Reject")  # the joint grader's own quality opinion
