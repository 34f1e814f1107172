"""DINO's parts against hand computations: the loss on two crops, multi-crop pairs, centering, the teacher EMA,
the momentum and temperature schedules, the frozen last layer, and the collapse guards."""
import math

import pytest
import torch
import torch.nn.functional as F

import vitlab
from vitlab.errors import VitlabError
from vitlab.models.dino import dino_loss, teacher_momentum, teacher_temperature, weight_decay
from vitlab.tasks.self_supervised import DINOObjective, MultiCropAugment, teacher_statistics


def _softmax(values, temp):
    e = [math.exp(v / temp) for v in values]
    return [x / sum(e) for x in e]


def test_loss_on_two_crops_equals_hand_computation():
    # one image, two global crops, K = 3 prototypes
    s = [[1.0, 0.0, -1.0], [0.5, 0.2, 0.1]]             # student scores of crop 1, crop 2
    t = [[0.3, -0.2, 0.9], [2.0, 1.0, 0.0]]             # teacher scores of crop 1, crop 2
    c = [0.1, 0.2, -0.3]
    tt, ts = 0.04, 0.1

    def ce(teacher_row, student_row):                    # -sum p_t log p_s
        p_t = _softmax([a - b for a, b in zip(teacher_row, c)], tt)
        p_s = _softmax(student_row, ts)
        return -sum(p * math.log(q) for p, q in zip(p_t, p_s))

    expected = (ce(t[0], s[1]) + ce(t[1], s[0])) / 2      # the pairs (1, 2) and (2, 1); never a view with itself
    got = dino_loss(torch.tensor(s), torch.tensor(t), torch.tensor([c]), tt, ts, num_global=2)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_multi_crop_loss_averages_every_pair_but_the_same_view():
    torch.manual_seed(0)
    B, K, V = 3, 5, 4                                    # 2 global + 2 local views
    s, t, c = torch.randn(V * B, K), torch.randn(2 * B, K), torch.randn(1, K)
    terms = []
    for i in range(2):
        p_t = F.softmax((t[i * B:(i + 1) * B] - c) / 0.05, dim=-1)
        for v in range(V):
            if v != i:
                terms.append(-(p_t * F.log_softmax(s[v * B:(v + 1) * B] / 0.1, dim=-1)).sum(-1).mean())
    assert len(terms) == 2 * V - 2
    torch.testing.assert_close(dino_loss(s, t, c, 0.05, 0.1), torch.stack(terms).mean())


def test_centering_and_teacher_ema_updates():
    torch.manual_seed(0)
    model = vitlab.create_model("dino_vit_micro_patch4_32", out_dim=16, hidden_dim=32, bottleneck_dim=8)
    c0 = torch.randn(1, 16)
    model.center.copy_(c0)
    out = torch.randn(6, 16)
    model.update_center(out)
    torch.testing.assert_close(model.center, 0.9 * c0 + 0.1 * out.mean(0, keepdim=True))
    # the teacher starts as the student, takes no gradient, and follows it as m t + (1 - m) s
    pairs = list(zip(model.teacher.parameters(), model.student.parameters()))
    assert all(torch.equal(t, s) for t, s in pairs) and not any(t.requires_grad for t, _ in pairs)
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(torch.randn_like(p))
    before = [t.clone() for t, _ in pairs]
    model.update_teacher(0.99)
    for (t, s), t0 in zip(pairs, before):
        torch.testing.assert_close(t, 0.99 * t0 + 0.01 * s)


def test_momentum_schedule_is_cosine_from_0996_to_1():
    assert teacher_momentum(0, 100) == pytest.approx(0.996)
    assert teacher_momentum(50, 100) == pytest.approx(0.998)
    assert teacher_momentum(100, 100) == pytest.approx(1.0)
    assert teacher_momentum(25, 100) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2)
    values = [teacher_momentum(i, 100) for i in range(101)]
    assert values == sorted(values)


def test_teacher_temperature_warms_up_linearly_then_stays():
    # 10 epochs, warm-up over 30% of them: 0.04, 0.055, 0.07, then 0.07
    assert [round(teacher_temperature(e, 10), 4) for e in range(5)] == [0.04, 0.055, 0.07, 0.07, 0.07]
    assert teacher_temperature(0, 100) == 0.04 and teacher_temperature(15, 100) == pytest.approx(
        0.04 + 0.03 * 15 / 29)


def _objective_step(model, objective, epoch):
    model.step.fill_(epoch * objective.steps_per_epoch)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    c = model.cfg
    aug = MultiCropAugment(32, c.local_size, 2, c.global_crops_scale, c.local_crops_scale, c.mean, c.std)
    x, targets = aug(images, torch.zeros(2, dtype=torch.long))
    assert x.shape == (4, 3, 32, 32) and targets["local"].shape == (4, 3, 16, 16)
    model.zero_grad()
    loss, _ = objective(model, x, targets)
    loss.backward()
    return loss


def test_last_layer_frozen_in_the_first_epoch_only_and_prototypes_unit_norm():
    torch.manual_seed(0)
    model = vitlab.create_model("dino_vit_micro_patch4_32", out_dim=16, hidden_dim=32, bottleneck_dim=8,
                                drop_path_rate=0.0, warmup_teacher_temp=0.04, teacher_temp=0.07)  # the paper's
    objective = DINOObjective(model, epochs=3)
    objective.steps_per_epoch = 2
    assert not model.student.head.last_layer.weight_g.requires_grad        # norm_last_layer: g fixed at 1
    _objective_step(model, objective, epoch=0)
    assert model.student.head.last_layer.weight_v.grad is None
    assert model.student.head.mlp[0].weight.grad.abs().sum() > 0
    assert model.teacher_temp.item() == pytest.approx(0.04)
    _objective_step(model, objective, epoch=1)
    assert model.student.head.last_layer.weight_v.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.parameters())
    w = model.student.head.last_layer.weight()
    torch.testing.assert_close(w.norm(dim=1), torch.ones(16))


def test_optimizer_step_moves_the_teacher_with_the_scheduled_momentum():
    torch.manual_seed(0)
    model = vitlab.create_model("dino_vit_micro_patch4_32", out_dim=16, hidden_dim=32, bottleneck_dim=8)
    objective = DINOObjective(model, epochs=2)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    objective.bind(opt, steps_per_epoch=5)
    _objective_step(model, objective, epoch=0)
    model.step.zero_()
    t0 = [p.clone() for p in model.teacher.parameters()]
    opt.step()
    m = teacher_momentum(0, 10)
    for t, before, s in zip(model.teacher.parameters(), t0, model.student.parameters()):
        torch.testing.assert_close(t, m * before + (1 - m) * s)
    assert int(model.step) == 1


def test_weight_decay_schedule_cosine_004_to_04_on_decayed_groups_only():
    assert weight_decay(0, 100) == pytest.approx(0.04) and weight_decay(100, 100) == pytest.approx(0.4)
    assert weight_decay(50, 100) == pytest.approx(0.22)
    assert weight_decay(25, 100) == pytest.approx(0.4 - 0.36 * (math.cos(math.pi / 4) + 1) / 2)
    assert weight_decay(150, 100) == pytest.approx(0.4)
    torch.manual_seed(0)
    model = vitlab.create_model("dino_vit_micro_patch4_32", out_dim=16, hidden_dim=32, bottleneck_dim=8)
    assert model.cfg.weight_decay_end == 0.4
    objective = DINOObjective(model, epochs=2, weight_decay=0.05)
    from vitlab.train.optim import build_optimizer
    opt = build_optimizer(model, 1e-3, 0.05)
    objective.bind(opt, steps_per_epoch=5)
    seen = []
    opt.register_step_post_hook(lambda o, *_: seen.append([g["weight_decay"] for g in o.param_groups]))
    for _ in range(3):
        model.zero_grad()
        sum(p.sum() for p in model.student.parameters() if p.requires_grad).backward()
        opt.step()
    expected = [0.4 + 0.5 * (0.05 - 0.4) * (1 + math.cos(math.pi * i / 10)) for i in range(3)]
    assert [w[0] for w in seen] == pytest.approx(expected) and all(w[1] == 0.0 for w in seen)
    assert int(model.step) == 3
    opt.load_state_dict(opt.state_dict())      # a resume: new group dicts; the schedule still reaches them
    opt.step()
    assert seen[-1][0] == pytest.approx(0.4 + 0.5 * (0.05 - 0.4) * (1 + math.cos(math.pi * 3 / 10)))


def test_collapse_guards():
    K = 8
    one = F.one_hot(torch.zeros(10, dtype=torch.long), K).float() * 0.99 + 0.01 / K
    s = teacher_statistics(one)
    assert s["collapsed"] and s["collapse_kind"] == "one prototype" and s["top_prototype_share"] == 1.0
    uniform = teacher_statistics(torch.full((10, K), 1.0 / K))
    assert uniform["collapse_kind"] == "uniform"
    assert uniform["teacher_entropy"] == pytest.approx(math.log(K)) and uniform["teacher_kl_uniform"] == pytest.approx(
        0.0, abs=1e-6)
    healthy = teacher_statistics(F.one_hot(torch.arange(10) % K, K).float() * 0.9 + 0.1 / K)
    assert not healthy["collapsed"] and healthy["prototypes_used"] == K
    p = 0.9 + 0.1 / K
    entropy = -(p * math.log(p) + (K - 1) * (0.1 / K) * math.log(0.1 / K))
    assert healthy["teacher_entropy"] == pytest.approx(entropy, rel=1e-5)
    assert healthy["teacher_kl_uniform"] == pytest.approx(math.log(K) - entropy, rel=1e-5)



def test_backbone_weight_init_jax_reaches_both_backbones_and_leaves_the_papers_head_init():
    torch.manual_seed(0)
    model = vitlab.create_model("dino_vit_micro_patch4_32", out_dim=16, hidden_dim=32, bottleneck_dim=8,
                                backbone_weight_init="jax")
    for net in (model.student, model.teacher):
        qkv = net.backbone.blocks[0].attn.qkv.weight                # (3 * dim, dim) = (192, 64)
        bound = math.sqrt(6.0 / (qkv.shape[0] + qkv.shape[1]))     # xavier-uniform: U(-a, a), std a / sqrt(3)
        assert 0.97 * bound < qkv.abs().max() <= bound
        assert qkv.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)       # 0.088, not 0.02
        assert net.head.mlp[0].weight.std().item() == pytest.approx(0.02, rel=0.1)    # the paper's head init
    s, t = model.student.state_dict(), model.teacher.state_dict()
    assert s.keys() == t.keys() and all(torch.equal(s[k], t[k]) for k in s)          # the teacher is the student
    # the small-data variants default to jax (with tau_t 0.02: the settings of every measured run); "" is the
    # official code's truncated normal 0.02, the released variants' default
    assert vitlab.create_model("dino_vit_micro_patch4_32", out_dim=16, hidden_dim=32,
                               bottleneck_dim=8).cfg.backbone_weight_init == "jax"
    from vitlab.models.dino import DINOConfig
    assert DINOConfig().backbone_weight_init == "" and DINOConfig().teacher_temp == 0.07
    plain = vitlab.create_model("dino_vit_micro_patch4_32", out_dim=16, hidden_dim=32, bottleneck_dim=8,
                                backbone_weight_init="")
    assert plain.student.backbone.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    with pytest.raises(VitlabError, match="weight_init must be"):
        vitlab.create_model("dino_vit_micro_patch4_32", backbone_weight_init="xavier")


def test_hybrid_backbone_tokens_go_through_its_cnn_at_any_crop_size():
    """A hybrid ViT as DINO's backbone: its tokens are the CNN's map through the 1x1 projection, at the global
    size (equal to the hybrid's own forward_features) and at the local crop size (8x8 -> 4x4 tokens at stride 8)."""
    from vitlab.models.dino import backbone_tokens

    torch.manual_seed(0)
    model = vitlab.create_model("dino_vit_micro_r6_s8_64", out_dim=16, hidden_dim=32, bottleneck_dim=8).eval()
    b = model.backbone
    g, local = torch.randn(2, 3, 64, 64), torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(backbone_tokens(b, g), b.forward_features(g))
    t = backbone_tokens(b, local)
    assert t.shape == (3, 1 + 16, 64)
    cnn = b.patch_embed.proj(b.patch_embed.backbone.forward_features(local))       # (3, 64, 4, 4)
    assert cnn.shape == (3, 64, 4, 4)
    out = model(g, local)
    assert out["student"].shape == (5, 16) and out["teacher"].shape == (2, 16)


def test_head_bn_follows_each_hidden_linear_in_the_official_layout_and_normalises_over_the_batch():
    torch.manual_seed(0)
    model = vitlab.create_model("dino_vit_micro_patch4_32", out_dim=16, hidden_dim=32, bottleneck_dim=8,
                                head_bn=True)
    for net in (model.student, model.teacher):
        kinds = [type(m).__name__ for m in net.head.mlp]
        assert kinds == ["Linear", "BatchNorm1d", "GELU", "Linear", "BatchNorm1d", "GELU", "Linear"]
    keys = [k for k in model.student.state_dict() if k.startswith("head.mlp.")]
    assert {k.split(".")[2] for k in keys} == {"0", "1", "3", "4", "6"}   # official use_bn_in_head indices
    model.train()
    head = model.student.head
    h = head.mlp[1](head.mlp[0](torch.randn(64, 64) * 5 + 3))               # (64, 32) after the first norm
    assert h.mean(dim=0).abs().max() < 1e-5 and h.std(dim=0, unbiased=False).sub(1).abs().max() < 1e-3
    assert [type(m).__name__ for m in vitlab.create_model("dino_vit_micro_patch4_32", out_dim=16, hidden_dim=32,
                                                          bottleneck_dim=8).student.head.mlp] == \
        ["Linear", "GELU", "Linear", "GELU", "Linear"]                      # off by default, as the paper's ViTs
