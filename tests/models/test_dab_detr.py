"""DAB-DETR's anchor-box queries on vitlab's DETR: the output contract, layer-by-layer refinement, gradients."""
import torch

import vitlab
from vitlab.models.dab_detr import _inverse_sigmoid, anchor_sine
from vitlab.registry import model_task


def test_contract_and_every_parameter_learns():
    torch.manual_seed(0)
    model = vitlab.create_model("dab_detr_micro_64", num_queries=7)
    assert model_task("dab_detr_micro_64") == "detection" and not hasattr(model, "query_embed")
    out = model(torch.randn(2, 3, 64, 64))
    assert out["logits"].shape == (2, 7, 7) and out["boxes"].shape == (2, 7, 4) and len(out["aux"]) == 2
    assert ((out["boxes"] > 0) & (out["boxes"] < 1)).all()
    loss = out["logits"].sum() + out["boxes"].sum() + sum(a["logits"].sum() + a["boxes"].sum() for a in out["aux"])
    loss.backward()
    idle = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    # as in DETR, the first decoder layer's self-attention sees all-zero content (values 0): its q/k and the norm
    # after it get no gradient; everything else does
    assert all(n.startswith(("decoder.layers.0.self_attn.", "decoder.layers.0.norm1.")) for n in idle), idle
    assert "anchors" in model.no_weight_decay()


def test_each_layer_corrects_the_box_of_the_layer_before():
    torch.manual_seed(0)
    model = vitlab.create_model("dab_detr_micro_64", num_queries=5).eval()
    captured = []
    model.box_head.register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    boxes = [a["boxes"] for a in out["aux"]] + [out["boxes"]]
    first = (model.anchors.sigmoid()[None] .logit(eps=1e-5) + captured[0]).sigmoid()
    torch.testing.assert_close(boxes[0], first)
    for layer in (1, 2):   # b_l = sigmoid(logit(b_{l-1}) + delta_l)
        torch.testing.assert_close(boxes[layer], (_inverse_sigmoid(boxes[layer - 1]) + captured[layer]).sigmoid())


def test_anchor_sine_encodes_each_coordinate():
    enc = anchor_sine(torch.tensor([[0.0, 0.25, 0.5, 1.0]]), dim=8)
    assert enc.shape == (1, 16)
    # the first channel of each coordinate is sin(2 pi c)
    torch.testing.assert_close(enc[0, 0::4], torch.sin(2 * torch.pi * torch.tensor([0.0, 0.25, 0.5, 1.0])),
                               atol=1e-6, rtol=0)
