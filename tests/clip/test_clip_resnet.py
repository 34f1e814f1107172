"""CLIP's modified-ResNet image tower: contract, attention pooling against torch's MHA, RN50's size."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vitlab
from vitlab.errors import VitlabError
from vitlab.models.clip_resnet import AttentionPool2d, CLIPResNet


def test_micro_contract_and_gradients():
    torch.manual_seed(0)
    model = vitlab.create_model("clip_resnet_micro_64")
    images, ids = torch.randn(3, 3, 64, 64), torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]])
    assert model.encode_image(images).shape == (3, model.cfg.embed_dim)
    assert model.image_patch_embeds(images).shape == (3, 16, model.cfg.embed_dim)      # 64 px / 16 -> 4x4
    out = model(images, ids)
    assert out["logits_per_image"].shape == (3, 2)
    torch.testing.assert_close(out["image_embeds"].norm(dim=-1), torch.ones(3))
    out["logits_per_image"].sum().backward()
    unused = [n for n, p in model.visual.named_parameters() if p.grad is None]
    assert unused == []


def test_attention_pool_equals_torch_multi_head_attention():
    torch.manual_seed(0)
    pool = AttentionPool2d(grid=3, dim=16, num_heads=4, output_dim=8)
    x = torch.randn(2, 16, 3, 3)
    tokens = x.flatten(2).permute(2, 0, 1)                                  # (HW, B, C), as OpenAI's code
    tokens = torch.cat([tokens.mean(0, keepdim=True), tokens]) + pool.positional_embedding[:, None]
    ref, _ = F.multi_head_attention_forward(
        tokens[:1], tokens, tokens, 16, 4, q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight, in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]), bias_k=None, bias_v=None,
        add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True, training=False, need_weights=False)
    torch.testing.assert_close(pool(x), ref[0], atol=1e-6, rtol=1e-5)


def test_anti_aliased_stride_pools_after_the_3x3():
    tower = CLIPResNet(layers=(1, 1), width=8, heads=2, output_dim=4, img_size=32)
    block = tower.layer2[0]
    assert block.conv2.stride == (1, 1) and isinstance(block.avgpool, torch.nn.AvgPool2d)
    assert list(dict(block.downsample.named_children())) == ["-1", "0", "1"]
    assert tower.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 64, 4, 4)


def test_rn50_has_openai_sizes():
    """OpenAI RN50: 102.0M parameters in all (the paper's model card / open_clip's table), visual 38.3M."""
    model = vitlab.create_model("clip_rn50_224")
    total = sum(p.numel() for p in model.parameters())
    visual = sum(p.numel() for p in model.visual.parameters())
    assert total == 102_007_137
    assert visual == 38_316_896
    assert "visual.attnpool.positional_embedding" in model.state_dict()
    assert model.state_dict()["visual.attnpool.positional_embedding"].shape == (50, 2048)
    assert "visual.layer1.0.downsample.0.weight" in model.state_dict()


def test_bad_vision_and_size_are_refused():
    with pytest.raises(VitlabError, match="vision must be"):
        vitlab.create_model("clip_resnet_micro_64", vision="cnn")
    with pytest.raises(VitlabError, match="multiple of"):
        vitlab.create_model("clip_resnet_micro_64", img_size=60)


def test_resnet_tower_refused_where_only_a_vit_tower_fits(tmp_path):
    """HF export and the ViT-rollout explain refuse a ResNet tower in one line instead of failing deep inside."""
    import vitlab
    from vitlab.convert.hf_clip import clip_to_hf
    from vitlab.errors import VitlabError
    from vitlab.explain.clip import explain_clip

    model = vitlab.create_model("clip_resnet_micro_64")
    with pytest.raises(VitlabError, match=r"^clip_resnet_micro_64: transformers' CLIPModel has a ViT image tower "
                                          r"only; this one is resnet$"):
        clip_to_hf(model)
    with pytest.raises(VitlabError, match=r"^clip_resnet_micro_64: vitlab explain draws a ViT image tower's rollout "
                                          r"and patch maps; this one has a resnet tower$"):
        explain_clip(model, [], tmp_path, texts=["a circle"])
