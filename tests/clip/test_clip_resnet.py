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


def test_resnet_tower_refused_where_only_a_vit_tower_fits():
    """HF export refuses a ResNet tower in one line instead of failing deep inside."""
    from vitlab.convert.hf_clip import clip_to_hf

    model = vitlab.create_model("clip_resnet_micro_64")
    with pytest.raises(VitlabError, match=r"^clip_resnet_micro_64: transformers' CLIPModel has a ViT image tower "
                                          r"only; this one is resnet$"):
        clip_to_hf(model)


def test_attnpool_map_is_the_pool_softmax_by_hand():
    """(a) explain's attnpool map: the mean query's softmax(q.k / sqrt(d)) over the grid, recomputed here from
    the q/k projections, averaged over heads, the query's self weight dropped and the rest renormalised."""
    from vitlab.explain.clip import attnpool_map

    torch.manual_seed(0)
    model = vitlab.create_model("clip_resnet_micro_64").eval()
    with torch.no_grad():                                 # at init the pool is near uniform: sharpen the query
        model.visual.attnpool.q_proj.weight.mul_(30.0)
    model.double()                                        # sharp softmax: compare in float64, not float32 noise
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    heat = attnpool_map(model, x).double()
    assert heat.shape == (2, 4, 4)
    torch.testing.assert_close(heat.flatten(1).sum(-1), torch.ones(2, dtype=torch.float64))
    pool = model.visual.attnpool
    with torch.no_grad():
        fmap = model.visual.forward_features(x)                               # (2, 256, 4, 4)
        tokens = torch.cat([fmap.flatten(2).mean(-1)[:, None], fmap.flatten(2).transpose(1, 2)], 1)
        tokens = tokens + pool.positional_embedding                           # (2, 17, 256)
        q, k = pool.q_proj(tokens[:, 0]), pool.k_proj(tokens)                 # (2, 256), (2, 17, 256)
        hd = 256 // pool.num_heads
        hand = torch.zeros(2, 16, dtype=torch.float64)
        for b in range(2):
            for h in range(pool.num_heads):
                s = torch.stack([q[b, h * hd:(h + 1) * hd] @ k[b, n, h * hd:(h + 1) * hd] for n in range(17)])
                w = torch.exp(s / hd ** 0.5 - (s / hd ** 0.5).max())
                w = w / w.sum()
                hand[b] += w[1:] / pool.num_heads                             # head mean, self weight dropped
        hand = hand / hand.sum(dim=1, keepdim=True)                           # renormalised over the grid
        # the fused forward uses the same weights: weighted values through c_proj give the pooled output
        weights = pool.attention_weights(fmap)                                # (2, heads, 17)
        v = pool.v_proj(tokens).view(2, 17, pool.num_heads, hd)
        pooled = pool.c_proj(torch.einsum("bhn,bnhd->bhd", weights, v).reshape(2, 256))
        torch.testing.assert_close(pooled, model.encode_image(x), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(heat.flatten(1), hand, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(hand, torch.full_like(hand, 1 / 16), atol=1e-3)  # a real, non-uniform map


def test_patch_embeds_equal_image_embed_when_every_position_is_the_same():
    """(b) one feature vector at every position and no position table: every token is the same, so the pool's
    output is v_proj -> c_proj of that token, which is what each position's embedding is."""
    torch.manual_seed(0)
    model = vitlab.create_model("clip_resnet_micro_64").eval()
    with torch.no_grad():
        model.visual.attnpool.positional_embedding.zero_()
    feat = torch.randn(2, 256, 1, 1).expand(2, 256, 4, 4)                     # (2, 256, 4, 4), constant map
    model.visual.forward_features = lambda images: feat
    with torch.no_grad():
        patches = model.image_patch_embeds(torch.zeros(2, 3, 64, 64))         # (2, 16, E)
        image = model.encode_image(torch.zeros(2, 3, 64, 64))                 # (2, E)
    assert patches.shape == (2, 16, model.cfg.embed_dim)
    for n in range(16):
        torch.testing.assert_close(patches[:, n], image, atol=1e-5, rtol=1e-4)


def test_cli_explain_on_a_trained_resnet_clip(tmp_path, capsys):
    """(c) a few training steps, saved as a run, then `vitlab explain --checkpoint RUN` writes every file."""
    import json

    from PIL import Image

    from vitlab.checkpoint import save_model
    from vitlab.cli import main
    from vitlab.text.tokenizer import build_word_level

    torch.manual_seed(0)
    tok = build_word_level(["a red circle", "a blue square"], max_length=8)
    model = vitlab.create_model("clip_resnet_micro_64", vocab_size=tok.vocab_size, eos_id=tok.eos_id,
                                context_length=8)
    ids, _ = tok.encode_batch(["a red circle", "a blue square"])
    images = torch.randn(2, 3, 64, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        logits = model(images, ids)["logits_per_image"]
        loss = F.cross_entropy(logits, torch.arange(2)) + F.cross_entropy(logits.t(), torch.arange(2))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    save_model(model.eval(), tmp_path / "run", task_extras={"tokenizer": tok.to_dict(), "classes": ["circle",
                                                                                                  "square"]})
    path = tmp_path / "img.png"
    Image.fromarray(torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8).numpy()).save(path)
    out = tmp_path / "out"
    assert main(["explain", "--checkpoint", str(tmp_path / "run"), str(path), "--text", "a red circle",
                 "--text", "a blue square", "--out", str(out)]) == 0
    assert "best prompt" in capsys.readouterr().out
    for name in ("attnpool.png", "text_maps.png", "similarity.png", "index.html", "summary.json"):
        assert (out / name).stat().st_size > 0
    assert not (out / "rollout.png").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["attention_map"]["file"] == "attnpool.png"
    assert "attention pooling" in summary["attention_map"]["kind"]
    assert "attnpool.png" in summary["files"]
