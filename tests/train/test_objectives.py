import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vitlab.data.augment import AugmentConfig, BatchAugment, mix_batch
from vitlab.errors import VitlabError
from vitlab.train.objectives import ClassificationObjective, DistillationObjective, classification_loss
from vitlab.train.optim import param_groups, warmup_cosine


class TwoHeads(nn.Module):
    """A stand-in distilled student: named outputs as a distilled DeiT returns them."""

    def __init__(self, cls_logits, dist_logits):
        super().__init__()
        self.cls, self.dist = nn.Parameter(cls_logits), nn.Parameter(dist_logits)

    def forward(self, x):
        return {"logits": (self.cls + self.dist) / 2, "cls_logits": self.cls, "distillation_logits": self.dist}


class Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


def test_hard_and_soft_distillation_follow_deit():
    torch.manual_seed(0)
    cls, dist, teacher = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5) * 3
    y = torch.tensor([0, 1, 2, 3])
    student, x = TwoHeads(cls, dist), torch.zeros(4, 3, 2, 2)
    hard = DistillationObjective(Fixed(teacher), "hard", alpha=0.5)
    loss, parts = hard(student, x, y)
    expected = 0.5 * F.cross_entropy(cls, y) + 0.5 * F.cross_entropy(dist, teacher.argmax(1))
    torch.testing.assert_close(loss, expected)
    assert set(parts) == {"ce", "distill"}
    tau, alpha = 3.0, 0.1
    soft = DistillationObjective(Fixed(teacher), "soft", tau=tau, alpha=alpha)
    loss_soft, _ = soft(student, x, y)
    p_t = F.softmax(teacher / tau, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(dist / tau, 1))).sum(1).mean() * tau ** 2
    torch.testing.assert_close(loss_soft, (1 - alpha) * F.cross_entropy(cls, y) + alpha * kl)
    assert not torch.allclose(loss, loss_soft)
    # both heads receive a gradient; the class head only from the labels, the distillation head from the teacher
    loss.backward()
    assert student.cls.grad.abs().sum() > 0 and student.dist.grad.abs().sum() > 0


def test_distillation_needs_a_distilled_student():
    obj = DistillationObjective(Fixed(torch.zeros(2, 3)), "hard")
    with pytest.raises(VitlabError, match="distilled student"):
        obj(Fixed(torch.zeros(2, 3, requires_grad=True)), torch.zeros(2, 3, 1, 1), torch.tensor([0, 1]))
    with pytest.raises(VitlabError, match="'hard' or 'soft'"):
        DistillationObjective(Fixed(torch.zeros(1)), "medium")


def test_teacher_inputs_are_renormalised():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(x)
            return torch.zeros(x.shape[0], 2)

    obj = DistillationObjective(Spy(), "hard", student_norm=((0.5,) * 3, (0.5,) * 3),
                                teacher_norm=((0.0,) * 3, (1.0,) * 3))
    x01 = torch.rand(2, 3, 4, 4)
    obj(TwoHeads(torch.zeros(2, 2), torch.zeros(2, 2)), (x01 - 0.5) / 0.5, torch.tensor([0, 1]))
    torch.testing.assert_close(seen[0], x01)


def test_classification_loss_soft_targets_equal_hard_for_one_hot():
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    soft = F.one_hot(y, 4).float()
    for ls in (0.0, 0.1):
        expected = F.cross_entropy(logits, y, label_smoothing=ls)
        torch.testing.assert_close(classification_loss(logits, soft, ls), expected)
    loss, _ = ClassificationObjective()(Fixed(logits), None, y)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y))


def test_mixup_and_cutmix_targets():
    torch.manual_seed(0)
    x = torch.zeros(4, 3, 8, 8)
    x[1] = 1.0
    y = torch.tensor([0, 1, 2, 3])
    mixed, t = mix_batch(x, y, 4, mixup_alpha=0.0, cutmix_alpha=1.0)
    torch.testing.assert_close(t.sum(1), torch.ones(4))
    # CutMix: image 2 pasted from image 1 (the batch reversed); its target weight for class 1 = pasted area
    area = mixed[2, 0].mean().item()
    assert t[2, 1].item() == pytest.approx(area)
    mixed, t = mix_batch(x, y, 4, mixup_alpha=0.4, cutmix_alpha=0.0)
    lam = t[0, 0].item()
    torch.testing.assert_close(mixed[2], (1 - lam) * x[1])


def test_augment_off_is_plain_normalisation():
    aug = BatchAugment(AugmentConfig(crop_scale=1.0, hflip=False), (0.5,) * 3, (0.25,) * 3, 8, 10)
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    x, t = aug(images, torch.tensor([1, 2]))
    torch.testing.assert_close(x, (images.float() / 255 - 0.5) / 0.25)
    assert t.tolist() == [1, 2]
    aug = BatchAugment(AugmentConfig(crop_scale=0.5, randaugment=2, erase=0.5, mixup=0.2), (0.5,) * 3,
                       (0.5,) * 3, 8, 10)
    x, t = aug(images, torch.tensor([1, 2]))
    assert x.shape == (2, 3, 8, 8) and t.shape == (2, 10) and torch.isfinite(x).all()


def test_weight_decay_groups_and_schedule():
    import vitlab

    m = vitlab.create_model("vit_micro_patch2_8")
    decay, no_decay = param_groups(m, 0.05)
    names = {id(p): n for n, p in m.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "pos_embed", "norm.weight", "blocks.0.attn.qkv.bias"} <= no_decay_names
    assert {names[id(p)] for p in decay["params"]} >= {"blocks.0.attn.qkv.weight", "head.weight"}
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=14, min_lr_ratio=0.0)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[9] == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi * 5 / 10)).item()))
