"""open_clip as a live oracle for the ModifiedResNet CLIP layout: open_clip's own RN CLIP at a tiny size (built,
never downloaded), random weights, its state dict read by vitlab, encode_image / encode_text compared.
Skipped where open_clip does not import (.venv); run it in the oracle venv with open_clip_torch installed:
    VITLAB_ORACLE=1 ~/.cache/vitlab/oracle-venv-*/bin/python -m pytest -q tests/convert/test_openai_clip_rn_oracle.py
"""
from __future__ import annotations

import pytest
import torch

from vitlab.checkpoint import load_model

from .helpers import randomize_

TOL = 1e-4


def test_open_clip_modified_resnet_matches(tmp_path):
    pytest.importorskip("open_clip", reason="open_clip_torch is not installed here")
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    ref = CLIP(embed_dim=24, quick_gelu=True,      # OpenAI's activation, the one vitlab's reader assumes
               vision_cfg=CLIPVisionCfg(layers=(1, 2, 1, 1), width=8, image_size=64),   # 4 stages: layer1..4
               text_cfg=CLIPTextCfg(context_length=7, vocab_size=30, width=64, heads=1, layers=2))
    for i, part in enumerate((ref.visual, ref.transformer, ref.token_embedding, ref.ln_final)):
        randomize_(part, seed=i)                # parts: randomize_ cannot take the 0-dim logit_scale
    ref.eval()
    with torch.no_grad():
        ref.positional_embedding.normal_(0, 0.1)
        ref.text_projection.normal_(0, 64 ** -0.5)
        # BN statistics away from 0 / 1, so a dropped buffer shows
        for name, t in ref.state_dict().items():
            if name.endswith("running_mean"):
                t.normal_(0, 0.2)
            elif name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
    torch.save(ref.state_dict(), tmp_path / "rn.pt")
    ours = load_model(tmp_path / "rn.pt").eval()
    assert tuple(ours.cfg.vision_layers) == (1, 2, 1, 1) and ours.cfg.vision_heads == 4
    x = torch.randn(2, 3, 64, 64)
    ids = torch.tensor([[5, 6, 7, 29, 0, 0, 0], [5, 29, 0, 0, 0, 0, 0]])   # eot = the largest id, as OpenAI's
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(x), ref.encode_image(x), atol=TOL, rtol=0)
        torch.testing.assert_close(ours.encode_text(ids), ref.encode_text(ids), atol=TOL, rtol=0)
