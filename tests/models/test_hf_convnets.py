"""HF transformers ResNet / CvT / ConvNeXt directories load into vitlab models with equal logits.

Tiny random configs, every weight and BN statistic randomised (HF's init leaves BN at identity and the layer scale
at 1e-6, which would hide mistakes), saved with save_pretrained, read through vitlab's interop machinery.
"""
from __future__ import annotations

import pytest
import torch

import vitlab
from vitlab.checkpoint import load_model
from vitlab.errors import VitlabError

transformers = pytest.importorskip("transformers", reason="HF transformers is the reference implementation")


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.ndim == 1:       # norm scales, layer scale
                t.copy_(1.0 + torch.randn(t.shape, generator=g) * 0.2)
            else:
                fan_in = t[0].numel() if t.ndim > 1 else 1
                t.copy_(torch.randn(t.shape, generator=g) / fan_in ** 0.5)


def _save(hf_model: torch.nn.Module, tmp_path) -> str:
    _randomise(hf_model)
    hf_model.eval()
    hf_model.save_pretrained(tmp_path)
    return str(tmp_path)


def _compare(hf_model: torch.nn.Module, ours: torch.nn.Module, size: int) -> float:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf_model(pixel_values=x).logits
        out = ours(x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    return (out - ref).abs().max().item()


@pytest.mark.parametrize("layer_type,depths,sizes", [("basic", [1, 2], [8, 16]),
                                                     ("bottleneck", [2, 1, 1], [16, 32, 64])])
def test_resnet_matches_hf(tmp_path, layer_type, depths, sizes):
    cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=sizes, depths=depths, layer_type=layer_type,
                                    num_labels=5)
    hf = transformers.ResNetForImageClassification(cfg)
    path = _save(hf, tmp_path)
    ours = vitlab.create_model("resnet50", checkpoint_path=path)
    assert type(ours).__name__ == "ResNet" and ours.cfg.block == layer_type
    _compare(hf, ours, 64)


def test_resnet50_layout_is_recognised(tmp_path):
    """The real ResNet-50 layout maps to our resnet50 by name (built on meta: no weights needed)."""
    from vitlab.convert.hf_convnets import resnet_from_hf

    cfg = transformers.ResNetConfig()                          # defaults = microsoft/resnet-50
    with torch.device("meta"):
        hf = transformers.ResNetForImageClassification(cfg)
    ckpt = resnet_from_hf(cfg.to_dict(), hf.state_dict(), tmp_path)
    assert ckpt.model == "resnet50"
    with torch.device("meta"):
        ours = vitlab.create_model(ckpt.model, **ckpt.model_args)
    assert set(ckpt.state_dict) == set(ours.state_dict())
    assert all(ckpt.state_dict[k].shape == v.shape for k, v in ours.state_dict().items())


def test_cvt_matches_hf(tmp_path):
    # (transformers' CvT cannot run without the last stage's [CLS] token: its classifier indexes it.)
    cfg = transformers.CvtConfig(embed_dim=[8, 16, 24], num_heads=[1, 2, 3], depth=[1, 2, 3],
                                 drop_path_rate=[0.0, 0.0, 0.0], num_labels=5)
    hf = transformers.CvtForImageClassification(cfg)
    path = _save(hf, tmp_path)
    ours = vitlab.create_model("cvt_13_224", checkpoint_path=path)
    assert ours.cfg.cls_token and list(ours.cfg.depths) == [1, 2, 3]
    _compare(hf, ours, 64)


def test_convnext_matches_hf(tmp_path):
    cfg = transformers.ConvNextConfig(hidden_sizes=[8, 16, 24], depths=[1, 2, 1], num_stages=3, num_labels=5)
    hf = transformers.ConvNextForImageClassification(cfg)
    path = _save(hf, tmp_path)
    ours = load_model(path)                        # no name: the checkpoint names the architecture
    assert type(ours).__name__ == "ConvNeXt" and ours.cfg.head_norm_eps == cfg.layer_norm_eps
    _compare(hf, ours, 64)


def test_unsupported_setting_is_refused(tmp_path):
    cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1],
                                    downsample_in_bottleneck=True, num_labels=3)
    path = _save(transformers.ResNetForImageClassification(cfg), tmp_path)
    with pytest.raises(VitlabError, match="downsample_in_bottleneck"):
        load_model(path)


@pytest.mark.parametrize("name,overrides,hf_class", [
    ("resnet50", dict(layers=(1, 2), widths=(4, 8), stem_width=8), "ResNetForImageClassification"),
    ("resnet18", dict(layers=(2, 1), widths=(8, 16), stem_width=8), "ResNetForImageClassification"),
    ("cvt_13_224", dict(dims=(8, 16, 24), num_heads=(1, 2, 3), depths=(1, 2, 3)), "CvtForImageClassification"),
    ("convnext_tiny", dict(dims=(8, 16), depths=(1, 2)), "ConvNextForImageClassification"),
])
def test_export_to_hf_loads_in_transformers(tmp_path, name, overrides, hf_class):
    from vitlab.convert.export_hf import save_hf

    ours = vitlab.create_model(name, num_classes=4, **overrides)
    _randomise(ours, seed=3)
    ours.eval()
    save_hf(ours, tmp_path)
    hf = transformers.AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == hf_class
    _compare(hf, ours, 64)


def test_export_refuses_what_transformers_cannot_express(tmp_path):
    from vitlab.convert.export_hf import save_hf

    with pytest.raises(VitlabError, match="stem='small'"):
        save_hf(vitlab.create_model("resnet_micro_32", num_classes=3), tmp_path)
