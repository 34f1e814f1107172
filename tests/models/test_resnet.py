"""ResNet: torchvision's layout and parameter counts, v1.5 strides, the small-image stem."""
from __future__ import annotations

import pytest
import torch

import vitlab


@pytest.mark.parametrize("name,params", [("resnet18", 11_689_512), ("resnet34", 21_797_672),
                                         ("resnet50", 25_557_032), ("resnet101", 44_549_160)])
def test_parameter_counts_equal_torchvision(name, params):
    with torch.device("meta"):
        model = vitlab.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == params      # torchvision's documented counts


def test_torchvision_names_and_v15_strides():
    with torch.device("meta"):
        model = vitlab.create_model("resnet50")
    keys = set(model.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer4.2.conv3.weight",
            "fc.weight"} <= keys
    block = model.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)   # stride on the 3x3 ("v1.5")
    assert block.downsample[0].stride == (2, 2)


def test_feature_map_sizes():
    small = vitlab.create_model("resnet_micro_32", num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    assert small.forward_features(x).shape == (2, 128, 4, 4)         # 3x3/1 stem, no max-pool: stride 8
    assert small.forward_head(small.forward_features(x), pre_logits=True).shape == (2, 128)
    big = vitlab.create_model("resnet18", layers=(1, 1, 1, 1), num_classes=3).eval()
    assert big.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 512, 2, 2)   # stride 32
