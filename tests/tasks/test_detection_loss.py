"""SetCriterion equals HF transformers' DETR loss (ImageLoss + HungarianMatcher) on the same outputs and targets."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.distributed as dist
from transformers.loss.loss_for_object_detection import HungarianMatcher as HFMatcher
from transformers.loss.loss_for_object_detection import ImageLoss

from vitlab.tasks.detection.loss import DetectionObjective, SetCriterion
from vitlab.tasks.detection.matcher import HungarianMatcher

Q, C = 10, 4                      # queries, classes
HF_WEIGHTS = {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}


def random_outputs(seed, batch, aux_layers, requires_grad=False):
    g = torch.Generator().manual_seed(seed)

    def layer():
        out = {"logits": torch.randn(batch, Q, C + 1, generator=g),
               "boxes": torch.rand(batch, Q, 4, generator=g) * 0.6 + 0.1}
        return {k: v.requires_grad_(requires_grad) for k, v in out.items()}

    last = layer()
    return {**last, "aux": [layer() for _ in range(aux_layers)]}


def random_targets(seed, sizes):
    g = torch.Generator().manual_seed(seed + 1000)
    return [{"labels": torch.randint(0, C, (n,), generator=g), "boxes": torch.rand(n, 4, generator=g) * 0.6 + 0.1}
            for n in sizes]


def hf_loss(outputs, targets):
    criterion = ImageLoss(HFMatcher(class_cost=1, bbox_cost=5, giou_cost=2), num_classes=C, eos_coef=0.1,
                          losses=["labels", "boxes"])
    hf_outputs = {"logits": outputs["logits"], "pred_boxes": outputs["boxes"]}
    if outputs["aux"]:
        hf_outputs["auxiliary_outputs"] = [{"logits": a["logits"], "pred_boxes": a["boxes"]} for a in outputs["aux"]]
    return criterion(hf_outputs, [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets])


def hf_total(losses):
    return sum(HF_WEIGHTS[k.rsplit("_", 1)[0] if k not in HF_WEIGHTS else k] * v for k, v in losses.items())


@pytest.mark.parametrize("aux_layers, sizes", [(0, [3, 1, 2]), (2, [3, 1, 2]), (5, [0, 4, 0, 1]), (2, [0, 0])])
def test_loss_equals_hf(aux_layers, sizes):
    outputs, targets = random_outputs(aux_layers, len(sizes), aux_layers), random_targets(aux_layers, sizes)
    ours = SetCriterion(C, HungarianMatcher())(outputs, targets)
    ref = hf_loss(outputs, targets)
    names = {"loss_ce", "loss_bbox", "loss_giou"}
    expected = names | {f"{n}_{i}" for n in names for i in range(aux_layers)}
    assert set(ours) == set(ref) == expected
    for name in expected:
        torch.testing.assert_close(ours[name], ref[name].reshape(()), rtol=0, atol=1e-6, msg=name)


def test_gradients_flow_and_equal_hf():
    sizes = [2, 0, 3]
    outputs, targets = random_outputs(7, 3, 2, requires_grad=True), random_targets(7, sizes)
    criterion = SetCriterion(C, HungarianMatcher())
    total = sum(criterion.weight(k) * v for k, v in criterion(outputs, targets).items())
    leaves = [outputs["logits"], outputs["boxes"]] + [a[k] for a in outputs["aux"] for k in ("logits", "boxes")]
    ours = torch.autograd.grad(total, leaves)
    ref = torch.autograd.grad(hf_total(hf_loss(outputs, targets)), leaves)
    for g, r in zip(ours, ref):
        assert torch.isfinite(g).all() and g.abs().sum() > 0        # every layer's logits and boxes get a gradient
        torch.testing.assert_close(g, r, rtol=0, atol=1e-6)


def test_empty_targets_give_no_object_loss_only():
    outputs, targets = random_outputs(2, 2, 0), random_targets(2, [0, 0])
    losses = SetCriterion(C, HungarianMatcher())(outputs, targets)
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_giou"].item() == 0.0
    # every query's target is no-object: the class weight (0.1 for all) cancels in the weighted mean
    expected = torch.nn.functional.cross_entropy(outputs["logits"].flatten(0, 1), torch.full((2 * Q,), C))
    torch.testing.assert_close(losses["loss_ce"], expected)


def test_objective_weights_every_layer_once():
    outputs, targets = random_outputs(4, 2, 3), random_targets(4, [2, 3])

    class FixedModel(torch.nn.Module):
        def forward(self, x):
            return outputs

    criterion = SetCriterion(C, HungarianMatcher())
    total, parts = DetectionObjective(criterion)(FixedModel(), torch.zeros(2, 3, 8, 8), targets)
    losses = criterion(outputs, targets)
    assert len(losses) == 12
    torch.testing.assert_close(total, hf_total(hf_loss(outputs, targets)), rtol=0, atol=1e-5)
    assert set(parts) == {"loss_ce", "loss_bbox", "loss_giou"}
    for k, v in parts.items():
        assert not v.requires_grad and v.item() == losses[k].item()


def test_bf16_outputs_are_scored_in_float32():
    outputs, targets = random_outputs(5, 2, 1), random_targets(5, [2, 1])
    half = {"logits": outputs["logits"].bfloat16(), "boxes": outputs["boxes"].bfloat16(),
            "aux": [{k: v.bfloat16() for k, v in a.items()} for a in outputs["aux"]]}
    upcast = {"logits": half["logits"].float(), "boxes": half["boxes"].float(),
              "aux": [{k: v.float() for k, v in a.items()} for a in half["aux"]]}
    criterion = SetCriterion(C, HungarianMatcher())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = criterion(half, targets)
    want = criterion(upcast, targets)
    for k in want:
        assert got[k].dtype == torch.float32
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)


def test_num_boxes_under_torch_distributed(tmp_path):
    targets = random_targets(0, [3, 0, 2])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        assert SetCriterion.num_boxes(targets, torch.device("cpu")).item() == 5.0     # all-reduced over 1 rank
    finally:
        dist.destroy_process_group()
    assert SetCriterion.num_boxes(random_targets(0, [0]), torch.device("cpu")).item() == 1.0   # clamped
