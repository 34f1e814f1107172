"""OpenAI / open_clip ModifiedResNet CLIP layout <-> our clip_resnet_* (vitlab.convert.hf_clip)."""
from __future__ import annotations

import pytest
import torch

import vitlab
from vitlab.checkpoint import load_model
from vitlab.convert.hf_clip import clip_to_openai, is_openai_clip_file, openai_rn_args, read_openai_clip

# width 8, stages (1, 2), 32 px: heads = 8 * 32 // 64 = 4 (OpenAI's rule), text 1 x 64 (heads 64 // 64 = 1)
SMALL = dict(vision="resnet", vision_layers=(1, 2), vision_width=8, vision_heads=4, img_size=32, vocab_size=20,
             eos_id=19, text_dim=64, text_depth=1, text_heads=1, embed_dim=16, context_length=6,
             act="quick_gelu", text_pool="argmax")
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
TEXT = ["token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias", "text_projection",
        "logit_scale"] + [f"transformer.resblocks.0.{n}" for n in (
            "ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
            "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
            "mlp.c_proj.weight", "mlp.c_proj.bias")]


def _openai_names() -> list[str]:
    """OpenAI's ModifiedResNet names for SMALL, written out by hand from its model.py layout."""
    names = [f"visual.conv{n}.weight" for n in (1, 2, 3)] + [f"visual.bn{n}.{p}" for n in (1, 2, 3) for p in BN]
    for block in ("layer1.0", "layer2.0", "layer2.1"):
        names += [f"visual.{block}.conv{n}.weight" for n in (1, 2, 3)]
        names += [f"visual.{block}.bn{n}.{p}" for n in (1, 2, 3) for p in BN]
    for block in ("layer1.0", "layer2.0"):      # 8 -> 32 channels, then stride 2: both have a shortcut conv
        names += [f"visual.{block}.downsample.0.weight"] + [f"visual.{block}.downsample.1.{p}" for p in BN]
    names += ["visual.attnpool.positional_embedding"]
    names += [f"visual.attnpool.{n}_proj.{p}" for n in "qkvc" for p in ("weight", "bias")]
    return names + TEXT


def _randomized(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    m = vitlab.create_model("clip_resnet_micro_64", **{**SMALL, **kw})
    with torch.no_grad():                      # BN statistics and zero-init gammas away from their defaults
        for name, t in m.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if name.endswith("running_var") else torch.randn_like(t) * 0.2)
    return m.eval()


def test_written_names_are_openais():
    sd = clip_to_openai(_randomized())
    assert sorted(sd) == sorted(_openai_names())
    assert sd["text_projection"].shape == (64, 16)                # x @ text_projection
    assert sd["visual.attnpool.positional_embedding"].shape == (1 + 4 * 4, 64)    # 32 px / stride 8; 16 * 4 ch
    assert sd["visual.attnpool.c_proj.weight"].shape == (16, 64)


def test_config_from_shapes():
    m = _randomized()
    sd = dict(m.state_dict())                                      # our names: the reader's renamed weights
    args = openai_rn_args(sd)
    assert args["vision_layers"] == (1, 2) and args["vision_width"] == 8 and args["vision_heads"] == 4
    assert args["img_size"] == 32 and args["embed_dim"] == 16 and args["in_chans"] == 3
    assert args["text_dim"] == 64 and args["text_depth"] == 1 and args["text_heads"] == 1
    assert args["vocab_size"] == 20 and args["eos_id"] == 19 and args["context_length"] == 6
    assert openai_rn_args(sd, num_heads=2)["vision_heads"] == 2


def test_round_trip_outputs_equal(tmp_path):
    m = _randomized()
    sd = clip_to_openai(m)
    del sd["visual.bn1.num_batches_tracked"]                       # a file without BN's counter still reads
    torch.save(sd, tmp_path / "rn.pt")
    assert is_openai_clip_file(tmp_path / "rn.pt")
    ck = read_openai_clip(tmp_path / "rn.pt")
    assert ck.model_args["vision_layers"] == (1, 2)
    back = load_model(tmp_path / "rn.pt").eval()
    x, ids = torch.randn(2, 3, 32, 32), torch.tensor([[3, 5, 6, 19, 0, 0], [3, 7, 19, 0, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(back.encode_image(x), m.encode_image(x), rtol=0, atol=0)
        torch.testing.assert_close(back.encode_text(ids), m.encode_text(ids), rtol=0, atol=0)
        torch.testing.assert_close(back(x, ids)["logits_per_image"], m(x, ids)["logits_per_image"], rtol=0, atol=0)
    assert sorted(clip_to_openai(back)) == sorted(_openai_names())


def test_convert_cli_output_loads(tmp_path):
    from vitlab.checkpoint import convert_checkpoint

    m = _randomized()
    torch.save(clip_to_openai(m), tmp_path / "rn.pt")
    convert_checkpoint(tmp_path / "rn.pt", tmp_path / "out")
    back = load_model(tmp_path / "out").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back.encode_image(x), m.encode_image(x), rtol=0, atol=0)


def test_unknown_visual_name_is_reported(tmp_path):
    sd = clip_to_openai(_randomized())
    sd["visual.layer1.0.se.fc.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "rn.pt")
    with pytest.raises(vitlab.VitlabError, match="se.fc"):
        load_model(tmp_path / "rn.pt")
