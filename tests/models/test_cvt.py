"""CvT: squeezed k/v (stride 2), the [CLS] token only in the last stage, fused and explicit attention agree."""
from __future__ import annotations

import os

import pytest
import torch

import vitlab
from vitlab.errors import VitlabError
from vitlab.models.cvt import ConvAttention

os.environ.setdefault("HF_HUB_OFFLINE", "1")     # transformers (the last test) never looks up the hub


def _record(attn: torch.nn.Module, store: list) -> None:
    attn.fused = False
    attn.weights.register_forward_hook(lambda m, i, o: store.append(o.shape))


def test_keys_and_values_are_subsampled_by_2():
    model = vitlab.create_model("cvt_micro_32", num_classes=5).eval()
    shapes: list = []
    _record(model.stages[0].blocks[0].attn, shapes)                    # stage 0: 16x16 grid, no [CLS]
    _record(model.stages[2].blocks[-1].attn, shapes)                   # stage 2: 4x4 grid + [CLS]
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    heads0, heads2 = model.cfg.num_heads[0], model.cfg.num_heads[2]
    assert shapes == [(2, heads0, 256, 64), (2, heads2, 1 + 16, 1 + 4)]


def test_fused_and_explicit_paths_agree_and_any_size_runs():
    model = vitlab.create_model("cvt_micro_32", num_classes=5).eval()
    x = torch.randn(2, 3, 48, 48)                                      # no position embedding: any size runs
    with torch.no_grad():
        fused = model(x)
        for stage in model.stages:
            for block in stage.blocks:
                block.attn.fused = False
        torch.testing.assert_close(model(x), fused, atol=1e-5, rtol=1e-5)


def test_class_token_only_in_the_last_stage():
    model = vitlab.create_model("cvt_13_224", num_classes=5, depths=(1, 1, 1))
    assert [s.cls_token is not None for s in model.stages] == [False, False, True]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert model.eval().forward_features(x).shape == (1, 1 + 4 * 4, 384)   # stride 16


def test_strided_queries_are_refused_with_the_reason():
    """stride_q > 1 would give the attention fewer output tokens than the residual it is added to."""
    message = r"CvT stride_q must be 1, got 2: the block's residual adds the attention output to its input"
    with pytest.raises(VitlabError, match=message):
        vitlab.create_model("cvt_micro_32", stride_q=2)
    with pytest.raises(VitlabError, match=message):
        ConvAttention(16, 2, stride_q=2)
    ConvAttention(16, 2, stride_q=1)                                     # the paper's setting builds


def test_an_hf_cvt_with_strided_queries_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers", reason="HF transformers writes the directory")
    cfg = transformers.CvtConfig(embed_dim=[8, 16, 24], num_heads=[1, 2, 3], depth=[1, 2, 3],
                                 drop_path_rate=[0.0, 0.0, 0.0], stride_q=[2, 2, 2], num_labels=3)
    transformers.CvtForImageClassification(cfg).save_pretrained(tmp_path)
    with pytest.raises(VitlabError, match="CvT stride_q must be 1, got 2"):
        vitlab.create_model("cvt_13_224", checkpoint_path=tmp_path)
