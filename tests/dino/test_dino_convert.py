"""Both official DINO layouts load through the converter: the released backbone (`dino_deitsmall16_pretrain.pth`:
timm ViT keys, no head) and main_dino.py's full checkpoint (student/teacher MultiCropWrappers, `module.` on the
student, the center under dino_loss, an argparse Namespace under args). The files are written here from our own
models under the official key names."""
import argparse
import json

import pytest
import torch

import vitlab
from vitlab.checkpoint import load_model
from vitlab.errors import VitlabError

NAME = "dino_vit_micro_patch4_32"
SMALL = dict(out_dim=16, hidden_dim=32, bottleneck_dim=8)


def _trained_like(seed=0, **kw):
    torch.manual_seed(seed)
    model = vitlab.create_model(NAME, **SMALL, **kw).eval()
    with torch.no_grad():                                # student and teacher apart, a non-zero center
        for p in model.student.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        model.center.normal_()
    return model


def _official_full(model, head_prefix="head"):
    """main_dino.py's save_dict from our model: student DDP-wrapped, teacher bare."""
    def net(prefix, module):
        sd = {f"{prefix}backbone.{k}": v.clone() for k, v in module.backbone.state_dict().items()}
        sd.update({f"{prefix}{head_prefix}.{k}": v.clone() for k, v in module.head.state_dict().items()})
        return sd

    return {"student": net("module.", model.student), "teacher": net("", model.teacher),
            "optimizer": {"state": {}, "param_groups": []}, "epoch": 7,
            "args": argparse.Namespace(arch="vit_micro", teacher_temp=0.07, local_crops_number=2),
            "dino_loss": {"center": model.center.clone()}}


def test_full_checkpoint_loads_both_networks_and_the_center(tmp_path):
    model = _trained_like()
    ckpt = _official_full(model)
    assert "module.head.last_layer.weight_g" in ckpt["student"] and "head.mlp.0.weight" in ckpt["teacher"]
    assert "module.backbone.blocks.0.attn.qkv.weight" in ckpt["student"]
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    loaded = load_model(tmp_path / "checkpoint.pth")
    assert loaded.vitlab_name == NAME and loaded.cfg.num_local_crops == 2
    ours, theirs = model.state_dict(), loaded.state_dict()
    for key in ours:
        if key not in ("step", "teacher_temp"):
            torch.testing.assert_close(theirs[key], ours[key], msg=key)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["teacher"], model(x)["teacher"])
        torch.testing.assert_close(loaded(x)["student"], model(x)["student"])


def test_dinov2_style_dino_head_keys_load_alike(tmp_path):
    model = _trained_like(1)
    torch.save(_official_full(model, head_prefix="dino_head"), tmp_path / "ck.pth")
    loaded = load_model(tmp_path / "ck.pth")
    torch.testing.assert_close(loaded.student.head.mlp[4].weight, model.student.head.mlp[4].weight)


def test_a_head_with_batchnorms_loads_with_its_running_statistics(tmp_path):
    model = _trained_like(2, head_bn=True)
    with torch.no_grad():
        model.teacher.head.mlp[1].running_mean.normal_()
    torch.save(_official_full(model), tmp_path / "bn.pth")
    loaded = load_model(tmp_path / "bn.pth")
    assert loaded.cfg.head_bn and not load_model(_save_plain(tmp_path)).cfg.head_bn
    torch.testing.assert_close(loaded.teacher.head.mlp[1].running_mean, model.teacher.head.mlp[1].running_mean)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["teacher"], model(x)["teacher"])


def _save_plain(tmp_path):
    torch.save(_official_full(_trained_like(3)), tmp_path / "plain.pth")
    return tmp_path / "plain.pth"


def test_released_backbone_loads_as_a_vit_and_as_a_dino_model(tmp_path):
    model = _trained_like(2)
    backbone = {k: v.clone() for k, v in model.teacher.backbone.state_dict().items()}   # timm names, no head
    assert "cls_token" in backbone and "blocks.0.mlp.fc1.weight" in backbone and "head.weight" not in backbone
    torch.save(backbone, tmp_path / "dino_micro_pretrain.pth")
    x = torch.randn(2, 3, 32, 32)
    # the plain ViT it is (a width-64 ViT does not imply its head count: named; ViT-S/16's 384 would)
    vit = load_model(tmp_path / "dino_micro_pretrain.pth", name="vit_micro_patch4_32")
    assert vit.num_classes == 0
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_head(vit.forward_features(x), pre_logits=True),
                                   model.forward_head(model.forward_features(x), pre_logits=True))
    dino = load_model(tmp_path / "dino_micro_pretrain.pth", name=NAME, **SMALL)   # both backbones; fresh heads
    for net in (dino.student, dino.teacher):
        for k, v in backbone.items():
            torch.testing.assert_close(net.backbone.state_dict()[k], v)
    assert torch.equal(dino.center, torch.zeros_like(dino.center))


def test_not_a_multicrop_wrapper_is_refused(tmp_path):
    torch.save({"student": {"module.foo.weight": torch.zeros(2)}, "teacher": {"foo.weight": torch.zeros(2)}},
               tmp_path / "bad.pth")
    with pytest.raises(VitlabError, match="'student' is not a DINO MultiCropWrapper state dict"):
        load_model(tmp_path / "bad.pth")


def test_hf_vitmodel_dino_directory_loads_as_the_vit_it_is(tmp_path, capsys):
    """A directory laid out as facebook/dino-vits16 (transformers' ViTModel without the pooler, ImageNet
    normalisation in preprocessor_config.json) loads as a plain ViT whose [CLS] features are HF's
    last_hidden_state[:, 0], and `vitlab eval --protocol knn` takes it as a checkpoint."""
    transformers = pytest.importorskip("transformers", reason="transformers is the HF reference (dev dependency)")
    from safetensors.torch import load_file

    from vitlab.cli import main
    from vitlab.imagenet import IMAGENET_MEAN, IMAGENET_STD

    # ViT-S/16's widths (384, 6 heads, MLP 1536), 2 of its 12 blocks, at 64 px
    cfg = transformers.ViTConfig(hidden_size=384, num_hidden_layers=2, num_attention_heads=6,
                                 intermediate_size=1536, patch_size=16, image_size=64)
    torch.manual_seed(0)
    ref = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():                                # no zero biases or unit norms left to hide a wrong key
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf_dir = tmp_path / "dino-vits16"
    ref.save_pretrained(hf_dir)
    transformers.ViTImageProcessor(image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)).save_pretrained(hf_dir)
    assert not any(k.startswith("pooler") for k in load_file(hf_dir / "model.safetensors"))

    ours = load_model(hf_dir).eval()
    assert tuple(ours.cfg.mean) == pytest.approx(IMAGENET_MEAN) and tuple(ours.cfg.std) == pytest.approx(IMAGENET_STD)
    x = torch.rand(2, 3, 64, 64)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref(pixel_values=(x - mean) / std).last_hidden_state[:, 0]
        got = ours.forward_head(ours.forward_features((x - mean) / std), pre_logits=True)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)

    capsys.readouterr()
    assert main(["eval", "--protocol", "knn", "--checkpoint", str(hf_dir), "--data", "scenes:24", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["feature_dim"] == 384 and 0.0 <= result["knn_top1"] <= 100.0
