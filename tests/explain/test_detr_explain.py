"""vitlab explain on DETR: the recorded attention equals a hand computation from the modules' projections, the
detected queries are post-processing's, and the report / CLI write the figures and name them."""
import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vitlab.checkpoint import save_model
from vitlab.cli import main
from vitlab.explain import ExplainOptions, explain
from vitlab.explain.detr import detected_queries, record_detr_attention, reference_points
from vitlab.layers import Attention
from vitlab.registry import create_model
from vitlab.tasks.detection.postprocess import postprocess

SIZE = 32                                  # the micro variants' stride 8 -> a 4x4 encoder grid
QUERIES = 5


def tiny_detr(backbone: str = "resnet"):
    torch.manual_seed(0)
    if backbone == "vit":
        model = create_model("detr_vit_micro_64", img_size=SIZE, enc_layers=1, dec_layers=2, num_queries=QUERIES,
                             backbone_args=dict(patch_size=8, dim=32, depth=1, num_heads=2))
    else:
        model = create_model("detr_micro_64", img_size=SIZE, enc_layers=1, dec_layers=2, num_queries=QUERIES)
    with torch.no_grad():                  # larger q/k weights than Xavier's: attention far from uniform
        for layer in model.encoder.layers:
            layer.self_attn.qkv.weight.mul_(3.0)
        for layer in model.decoder.layers:
            layer.cross_attn.q.weight.mul_(3.0)
            layer.cross_attn.kv.weight.mul_(3.0)
    return model.eval()


@pytest.fixture(scope="module")
def detr():
    return tiny_detr()


def _capture_inputs(module):
    """A forward pre-hook keeping the module's (args, kwargs) of its last call."""
    seen = {}

    def hook(_mod, args, kwargs):
        seen["args"], seen["kwargs"] = args, kwargs

    return seen, module.register_forward_pre_hook(hook, with_kwargs=True)


def _softmax_qk(q, k, heads):
    """q (B, Nq, C), k (B, Nk, C) -> softmax(q k^T / sqrt(d)) per head, mean over heads: (B, Nq, Nk)."""
    B, Nq, C = q.shape
    d = C // heads
    q = q.view(B, Nq, heads, d).transpose(1, 2)                     # (B, h, Nq, d)
    k = k.view(B, k.shape[1], heads, d).transpose(1, 2)             # (B, h, Nk, d)
    return (q @ k.transpose(-2, -1) / math.sqrt(d)).softmax(-1).mean(1)


@pytest.mark.parametrize("backbone", ["resnet", "vit"])
def test_recorded_attention_equals_a_hand_computation(backbone):
    model = tiny_detr(backbone)
    x = torch.randn(2, 3, SIZE, SIZE)
    cross_mod, enc_mod = model.decoder.layers[-1].cross_attn, model.encoder.layers[-1].self_attn
    cross_in, h1 = _capture_inputs(cross_mod)
    enc_in, h2 = _capture_inputs(enc_mod)
    rec = record_detr_attention(model, x)
    h1.remove(), h2.remove()
    heads, C = cross_mod.num_heads, model.cfg.dim
    assert rec.grid == (4, 4)
    assert rec.cross.shape == (2, heads, QUERIES, 16)                # (B, heads, queries, grid_h * grid_w)
    assert rec.encoder.shape == (2, heads, 16, 16)
    torch.testing.assert_close(rec.cross.sum(-1), torch.ones(2, heads, QUERIES))
    torch.testing.assert_close(rec.encoder.sum(-1), torch.ones(2, heads, 16))

    # decoder: q = W_q (t + query_pos), k = W_k (memory + memory_pos), from the module's own projections
    t, memory = cross_in["args"][:2]
    q_pos, k_pos = cross_in["kwargs"]["q_pos"], cross_in["kwargs"]["k_pos"]
    with torch.no_grad():
        q = cross_mod.q(t + q_pos)
        k = F.linear(memory + k_pos, cross_mod.kv.weight[:C], cross_mod.kv.bias[:C])
        expected = _softmax_qk(q, k, heads)                          # (B, Q, hw)
    torch.testing.assert_close(rec.cross.mean(1), expected, rtol=1e-4, atol=1e-6)
    assert float(expected.amax()) > 3 / 16                           # informative: far from uniform

    # encoder: q, k = W_{q,k} (tokens + pos)
    tokens, pos = enc_in["args"][0], enc_in["kwargs"]["pos"]
    with torch.no_grad():
        qk = F.linear(tokens + pos, enc_mod.qkv.weight[:2 * C], enc_mod.qkv.bias[:2 * C])
        expected = _softmax_qk(qk[..., :C], qk[..., C:], heads)      # (B, hw, hw)
    torch.testing.assert_close(rec.encoder.mean(1), expected, rtol=1e-4, atol=1e-6)

    # the recording changed nothing: same outputs as the fused path, every module fused again
    with torch.no_grad():
        fused = model(x)
    torch.testing.assert_close(rec.outputs["logits"], fused["logits"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rec.outputs["boxes"], fused["boxes"], rtol=1e-4, atol=1e-5)
    assert all(m.fused for m in model.modules() if isinstance(m, Attention))


def test_detected_queries_are_postprocessings_detections():
    torch.manual_seed(1)
    outputs = {"logits": torch.randn(2, 6, 4) * 3, "boxes": torch.rand(2, 6, 4) * 0.5 + 0.25}
    found = detected_queries(outputs, 0.3, (40, 60), max_objects=8)
    reference = postprocess(outputs, [(40, 60)] * 2, threshold=0.3)
    for i, (det, ref) in enumerate(zip(found, reference)):
        assert not det["below_threshold"] and len(det["queries"]) == len(ref["scores"]) > 0
        torch.testing.assert_close(det["scores"], ref["scores"])
        torch.testing.assert_close(det["labels"], ref["labels"])
        torch.testing.assert_close(det["boxes"], ref["boxes"])
        prob = outputs["logits"][i].softmax(-1)[:, :-1].max(-1).values
        torch.testing.assert_close(prob[det["queries"]], det["scores"])    # the indices are the queries scored


def test_no_detection_falls_back_to_the_best_queries():
    logits = torch.zeros(1, 6, 3)
    logits[0, :, -1] = 10.0                                          # all "no object"
    logits[0, 4, 0], logits[0, 1, 1] = 9.0, 8.0                      # query 4 best, then query 1
    found = detected_queries({"logits": logits, "boxes": torch.full((1, 6, 4), 0.5)}, 0.5, (32, 32))[0]
    assert found["below_threshold"]
    assert found["queries"].tolist()[:2] == [4, 1] and len(found["queries"]) == 3


def test_reference_points_are_box_centres_then_fixed_points():
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0],                       # centre (4, 4) px -> cell (0, 0)
                          [1.0, 1.0, 7.0, 7.0],                       # same cell: not repeated
                          [20.0, 8.0, 28.0, 16.0]])                   # centre y 12, x 24 -> cell (1, 3)
    cells = reference_points(boxes, (32, 32), (4, 4), count=4)
    assert cells == [(0, 0), (1, 3), (1, 1), (3, 1)]                  # then FIXED_POINTS (0.25, 0.25), ...
    assert reference_points(boxes[:0], (32, 32), (4, 4), count=2) == [(1, 1), (1, 3)]


def test_report_writes_the_figures_and_names_them(detr, tmp_path):
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    summary = explain(detr, images, tmp_path, classes=list("abcdef"), names=["one", "two"],
                      options=ExplainOptions(threshold=0.0, reference_points=3))
    files = ["cross_attention_1.png", "cross_attention_2.png", "encoder_attention_1.png", "encoder_attention_2.png",
             "saliency.png"]
    page = (tmp_path / "index.html").read_text()
    for name in files:
        Image.open(tmp_path / name).verify()
        assert f'src="{name}"' in page
    assert "Decoder cross-attention (DETR Fig. 6)" in page and "Encoder self-attention (DETR Fig. 3)" in page
    assert "attention rollout: classification-only" in page and "rollout.png" not in page
    assert json.loads((tmp_path / "summary.json").read_text())["detections"] == summary["detections"]
    assert summary["grid"] == [4, 4]
    assert [len(d["objects"]) for d in summary["detections"]] == [QUERIES, QUERIES]    # threshold 0: every query
    assert all(len(d["reference_cells_rc"]) == 3 for d in summary["detections"])
    assert {o["class"] for d in summary["detections"] for o in d["objects"]} <= set("abcdef")


def test_cli_explains_a_detection_run(detr, tmp_path, capsys):
    run = save_model(detr, tmp_path / "run", classes=["circle", "square", "triangle", "star", "ring", "cross"])
    Image.fromarray(torch.randint(0, 256, (40, 50, 3), dtype=torch.uint8).numpy()).save(tmp_path / "a.png")
    out = tmp_path / "report"
    assert main(["explain", "--checkpoint", str(run), str(tmp_path / "a.png"), "--data", "scenes", "--samples", "1",
                 "--out", str(out), "--threshold", "0.99"]) == 0
    page = (out / "index.html").read_text()
    for name in ["cross_attention_1.png", "cross_attention_2.png", "encoder_attention_1.png",
                 "encoder_attention_2.png"]:
        assert (out / name).is_file() and f'src="{name}"' in page
    printed = capsys.readouterr().out
    assert "a.png" in printed and "scenes val #0 (true: " in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threshold"] == 0.99 and all(d["objects"] == [] for d in summary["detections"])
    assert "none above 0.99" in page                                  # the best queries drawn, said so
