"""CLEAQ-DR's networks: the ResNet backbones against torchvision's, U-IQE/Seg-IQE, C-IQA/LQI-IQA, the grader,
and the wiring (gradient reversal, quality fusion) of pyfundus.models.cleaq."""

from __future__ import annotations

import pytest
import torch

from pyfundus.models import create_model, model_task
from pyfundus.models.cleaq import GradientReversal
from pyfundus.models.resnet import resnet34, resnet50

SMALL_IQE = {"arch": "cleaq_iqe_cpu", "kwargs": {"img_size": 64}}
SMALL_IQA = {"arch": "cleaq_iqa_cpu", "kwargs": {"img_size": 64, "width": 0.125}}
SMALL_DR = {"arch": "cleaq_dr_cpu", "kwargs": {"img_size": 64, "width": 0.125, "num_classes": 4}}


def _parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_resnets_have_torchvisions_parameter_counts_and_key_names():
    # torchvision: resnet34 21,797,672 and resnet50 25,557,032 parameters, of which the 1000-way fc holds
    # 513,000 and 2,049,000: the backbones without it must hold the rest, under the same names.
    r34, r50 = resnet34(), resnet50()
    assert _parameters(r34) == 21_797_672 - 513_000
    assert _parameters(r50) == 25_557_032 - 2_049_000
    keys = set(r50.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv3.weight", "layer1.0.downsample.0.weight",
            "layer4.2.bn3.bias"} <= keys  # fmt: skip
    assert r34.stage_channels == [64, 128, 256, 512] and r50.stage_channels == [256, 512, 1024, 2048]


def test_untrained_enhancer_returns_its_input_and_seg_iqe_guides_three_decoder_blocks():
    torch.manual_seed(0)
    iqe = create_model("cleaq_iqe_cpu", img_size=64).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        heads = iqe.forward_with_heads(x)
    assert torch.equal(heads["enhanced"], x)  # the correction starts at zero
    assert heads["vessel_logits"].shape == (2, 1, 64, 64)
    # Decoder blocks 1-3 take U-IQE's own channels plus Seg-IQE's features at 1/8, 1/4, 1/2.
    seg = iqe.segmentation.feature_channels
    assert [iqe.dec3[0].in_channels, iqe.dec2[0].in_channels, iqe.dec1[0].in_channels] == [48 + seg[0], 32 + seg[1], 24 + seg[2]]
    assert iqe.dec0[0].in_channels == 16
    plain = create_model("cleaq_iqe_cpu", img_size=64, segmentation=False)
    assert plain.segmentation is None and "vessel_logits" not in plain.forward_with_heads(x)
    assert set(iqe.forward_with_heads(x, vessels=False)) == {"enhanced"}


def test_paper_setting_sizes():
    assert create_model("cleaq_iqe").img_size == 512 and create_model("cleaq_dr").img_size == 512
    assert create_model("cleaq_iqa").backbone.num_features == 2048
    assert _parameters(create_model("cleaq_iqe_cpu")) < 2_000_000 < 30_000_000 < _parameters(create_model("cleaq_iqe"))


def test_quality_network_reconstructs_and_its_features_reach_c_iqa():
    torch.manual_seed(0)
    iqa = create_model("cleaq_iqa_cpu", img_size=64, width=0.125).eval()
    x = torch.rand(2, 3, 64, 64)
    heads = iqa.forward_with_heads(x)
    assert heads["quality_logits"].shape == (2, 3) and heads["reconstruction"].shape == x.shape
    assert heads["features"].shape == (2, iqa.num_features)
    # The LQI features are added into C-IQA: changing their projection changes the class logits.
    with torch.no_grad():
        before = iqa(x)
        iqa.inject[2].bias.add_(1.0)
        assert not torch.allclose(before, iqa(x))
    ablated = create_model("cleaq_iqa_cpu", img_size=64, width=0.125, lqi=False)
    assert "reconstruction" not in ablated.forward_with_heads(x)


def test_gradient_reversal_hands_the_enhancer_the_negated_quality_gradient():
    x = torch.rand(2, 3, 64, 64)
    target = torch.tensor([0, 2])
    grads = {}
    for reverse in (False, True):
        torch.manual_seed(0)
        net = create_model("cleaq", dr=SMALL_DR, iqe=SMALL_IQE, iqa=SMALL_IQA, gradient_reversal=reverse)
        net.train()
        loss = torch.nn.functional.cross_entropy(net.forward_with_heads(x)["quality_logits"], target)
        loss.backward()
        grads[reverse] = (net.iqe.out.weight.grad.clone(), net.iqa.fc.weight.grad.clone())
    assert grads[False][0].abs().sum() > 0
    assert torch.allclose(grads[True][0], -grads[False][0], atol=1e-6)  # the enhancer: reversed
    assert torch.allclose(grads[True][1], grads[False][1])  # IQA itself: learns as usual
    layer = GradientReversal(0.5)
    y = torch.ones(3, requires_grad=True)
    layer(y).sum().backward()
    assert torch.equal(y.grad, torch.full((3,), -0.5))


def test_quality_fusion_feeds_the_grader_without_training_iqa_through_it():
    torch.manual_seed(0)
    net = create_model("cleaq", dr=SMALL_DR, iqa=SMALL_IQA, quality_fusion=True).train()
    assert net.dr.fc.in_features == net.dr.backbone.num_features + net.iqa.num_features
    out = net.forward_with_heads(torch.rand(2, 3, 64, 64))
    assert set(out) == {"dr_logits", "quality_logits", "reconstruction"}
    out["dr_logits"].sum().backward()
    assert all(p.grad is None for p in net.iqa.parameters())
    alone = create_model("cleaq", dr=SMALL_DR)
    assert alone.iqe is None and alone.iqa is None and set(alone.forward_with_heads(torch.rand(1, 3, 64, 64))) == {"dr_logits"}
    with pytest.raises(ValueError, match="one size"):
        create_model("cleaq", dr=SMALL_DR, iqe={"arch": "cleaq_iqe_cpu", "kwargs": {"img_size": 96}})


def test_each_model_says_its_task():
    assert model_task("fthnet_s") == "quality"
    assert model_task("cleaq_iqe_cpu") == "enhance" and model_task("cleaq_iqe") == "enhance"
    assert model_task("cleaq_iqa_cpu") == "quality_class"
    assert model_task("cleaq") == "grade" and model_task("cleaq_dr") == "grade"
