"""timm state dicts of ResNet / ConvNeXt / ConvMixer / MLP-Mixer load into vitlab models.

Without timm: a state dict written in timm's names (our weights renamed through the table backwards) is read back
with the architecture recovered from the shapes alone, and gives the same logits. With timm (GPU machines): timm's
own randomly initialised models give the same logits as ours.
"""
from __future__ import annotations

import pytest
import torch

import vitlab
from vitlab.convert import read_checkpoint
from vitlab.convert._keymap import rename
from vitlab.convert.timm_convnets import TIMM_CONVMIXER_KEYS, TIMM_CONVNEXT_KEYS, TIMM_MIXER_KEYS, TIMM_RESNET_KEYS
from vitlab.errors import VitlabError

CASES = [  # (our model, overrides, table, input size)
    ("resnet18", dict(layers=(1, 2), widths=(8, 16), stem_width=8, num_classes=5), TIMM_RESNET_KEYS, 32),
    ("resnet50", dict(layers=(2, 1), widths=(4, 8), stem_width=8, num_classes=5), TIMM_RESNET_KEYS, 32),
    ("convnext_tiny", dict(depths=(1, 2), dims=(8, 16), num_classes=5), TIMM_CONVNEXT_KEYS, 32),
    ("convmixer_768_32", dict(dim=16, depth=2, num_classes=5), TIMM_CONVMIXER_KEYS, 28),
    ("mixer_b16_224", dict(dim=16, depth=2, tokens_mlp_dim=8, channels_mlp_dim=32, img_size=32, num_classes=5),
     TIMM_MIXER_KEYS, 32),
]


def _randomise_(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var")
                        else torch.randn(t.shape, generator=g) * 0.3)
    return model.eval()


@pytest.mark.parametrize("name,overrides,table,size", CASES, ids=[c[0] for c in CASES])
def test_timm_layout_roundtrip(tmp_path, name, overrides, table, size):
    ours = _randomise_(vitlab.create_model(name, **overrides))
    timm_sd, unmapped = rename(ours.state_dict(), table, reverse=True)
    assert not unmapped
    torch.save(timm_sd, tmp_path / "weights.pth")
    ckpt = read_checkpoint(tmp_path / "weights.pth")
    assert ckpt.model == name
    loaded = vitlab.create_model(name, checkpoint_path=tmp_path / "weights.pth")
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ours(x), rtol=0, atol=0)


def test_unknown_timm_variant_is_refused(tmp_path):
    sd = vitlab.create_model("resnet18", layers=(1,), widths=(8,), stem_width=8, num_classes=2).state_dict()
    sd = {("conv1.0.weight" if k == "conv1.weight" else k): v for k, v in sd.items()}   # resnet-D deep stem
    sd["conv1.weight"] = sd["conv1.0.weight"]                  # keep it detectable as a ResNet
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(VitlabError, match=r"conv1\.0\.weight"):
        read_checkpoint(tmp_path / "w.pth")


# Full-size timm models (several timm variant functions refuse depth overrides); small inputs keep them quick.
TIMM_CASES = [("resnet18", 64), ("resnet50", 64), ("convnext_tiny", 64), ("convmixer_768_32", 56),
              ("mixer_s16_224", 224)]


@pytest.mark.parametrize("name,size", TIMM_CASES, ids=[c[0] for c in TIMM_CASES])
def test_matches_timm(tmp_path, name, size):
    timm = pytest.importorskip("timm", reason="timm is the reference here; it does not import on this machine")
    ref = _randomise_(timm.create_model(name, pretrained=False, num_classes=5))
    torch.save(ref.state_dict(), tmp_path / "weights.pth")
    ours = vitlab.create_model(name, checkpoint_path=tmp_path / "weights.pth")
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)
