"""Zero-shot prompt ensembles: "mean" (CLIP's, in embedding space) and "prob" (in probability space) against hand
computations; a case where they disagree; the default each checkpoint gets; the CLI option."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor, nn

import vitlab
from vitlab.errors import VitlabError
from vitlab.tasks.contrastive import (GENERIC_TEMPLATES, SCENES_TEMPLATES, ContrastiveTask, default_ensemble,
                                      encode_texts, zero_shot_log_probs)
from vitlab.text.tokenizer import build_word_level


class TableTokenizer:
    """Each known text is one id: encode_batch gives (B, 1) ids, the text's index in `texts`."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def encode_batch(self, texts, truncate=False):
        return torch.tensor([[self.texts.index(t)] for t in texts]), None


class TableClip(nn.Module):
    """encode_text returns fixed rows of a table; the scale is fixed."""

    def __init__(self, table: Tensor, scale: float) -> None:
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)
        self._scale = scale

    def encode_text(self, ids: Tensor) -> Tensor:
        return self.table[ids[:, 0]]

    def scale(self) -> Tensor:
        return torch.tensor(self._scale)


def test_mean_and_prob_equal_hand_computations_on_a_real_clip():
    torch.manual_seed(0)
    classes, templates = ["circle", "star", "ring"], ["a small red {}", "a large blue {}", "a {}"]
    tok = build_word_level([t.format(c) for t in templates for c in classes], max_length=40)
    model = vitlab.create_model("clip_micro_patch16_64", vocab_size=tok.vocab_size, eos_id=tok.eos_id).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(7.0))
    images = nn.functional.normalize(torch.randn(5, 128), dim=-1)                  # (N, E)
    dev = torch.device("cpu")
    prompt = {(c, t): encode_texts(model, tok, [t.format(c)], dev)[0] for c in classes for t in templates}
    for ensemble in ("mean", "prob"):
        got = zero_shot_log_probs(model, tok, images, classes, templates, ensemble, dev).exp()
        for n in range(len(images)):
            if ensemble == "mean":
                rows = [nn.functional.normalize(torch.stack([prompt[c, t] for t in templates]).mean(0), dim=0)
                        for c in classes]
                scores = [math.exp(7.0 * float(images[n] @ r)) for r in rows]
            else:
                scores = [sum(math.exp(7.0 * float(images[n] @ prompt[c, t])) for t in templates) for c in classes]
            want = torch.tensor([s / sum(scores) for s in scores])
            torch.testing.assert_close(got[n], want, atol=1e-5, rtol=1e-5)


def test_prob_finds_the_class_whose_one_matching_prompt_scores_high_where_the_mean_does_not():
    # templates name a nuisance colour; the image is exactly "x A". A's other prompt points away from it, so the
    # mean embedding of A is far from the image and B's mean is nearer: mean says B, prob says A.
    texts = ["x A", "y A", "x B", "y B"]
    table = torch.tensor([[1.0, 0, 0], [-0.8, 0, 0.6], [0.8, 0.6, 0], [0, 1.0, 0]])
    model, tok = TableClip(table, 10.0), TableTokenizer(texts)
    image = torch.tensor([[1.0, 0, 0]])
    dev = torch.device("cpu")
    mean = zero_shot_log_probs(model, tok, image, ["A", "B"], ["x {}", "y {}"], "mean", dev).exp()[0]
    prob = zero_shot_log_probs(model, tok, image, ["A", "B"], ["x {}", "y {}"], "prob", dev).exp()[0]
    # mean: A's row (0.1, 0, 0.3)/|.| has cos 0.316 with the image, B's (0.4, 0.8, 0)/|.| cos 0.447
    a, b = 10 * 0.1 / math.sqrt(0.1), 10 * 0.4 / math.sqrt(0.8)
    torch.testing.assert_close(mean, torch.tensor([math.exp(a), math.exp(b)]) / (math.exp(a) + math.exp(b)))
    pa, pb = math.exp(10) + math.exp(-8), math.exp(8) + math.exp(0)
    torch.testing.assert_close(prob, torch.tensor([pa, pb]) / (pa + pb))
    assert int(mean.argmax()) == 1 and int(prob.argmax()) == 0


def test_bad_ensemble_and_prompts_are_refused():
    model, tok = TableClip(torch.eye(2), 1.0), TableTokenizer(["a", "b"])
    image = torch.ones(1, 2)
    with pytest.raises(VitlabError, match="ensemble must be one of mean, prob"):
        zero_shot_log_probs(model, tok, image, ["a"], ["{}"], "max", torch.device("cpu"))
    with pytest.raises(VitlabError, match="must hold"):
        zero_shot_log_probs(model, tok, image, ["a"], ["no slot"], "prob", torch.device("cpu"))
    with pytest.raises(VitlabError, match="at least one class"):
        zero_shot_log_probs(model, tok, image, [], ["{}"], "prob", torch.device("cpu"))


def test_defaults_scenes_checkpoints_prob_others_mean():
    assert default_ensemble(SCENES_TEMPLATES) == "prob" and default_ensemble(GENERIC_TEMPLATES) == "mean"
    task, model = ContrastiveTask(), nn.Module()
    task.restore_extras(model, {"templates": list(SCENES_TEMPLATES)})          # saved before `ensemble` was kept
    assert model.ensemble == "prob"
    task.restore_extras(model, {"templates": list(SCENES_TEMPLATES), "ensemble": "mean"})
    assert model.ensemble == "mean"
    task.restore_extras(model, {"templates": ["a photo of a {}"]})
    assert model.ensemble == "mean"


def test_cli_ensemble_option_and_the_run_default(tmp_path, capsys):
    from vitlab.cli import main

    run = tmp_path / "run"
    assert main(["train", "--model", "clip_micro_patch16_64", "--data", "scenes:64", "--epochs", "1",
                 "--batch-size", "16", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["task_extras"]["ensemble"] == "prob"
    got = {}
    for extra in ([], ["--ensemble", "mean"], ["--ensemble", "prob"]):
        capsys.readouterr()
        assert main(["zero-shot", "--checkpoint", str(run), "--data", "scenes:24", "--json", *extra]) == 0
        r = json.loads(capsys.readouterr().out)
        got[tuple(extra)] = r
    assert got[()]["ensemble"] == "prob" and got[("--ensemble", "mean")]["ensemble"] == "mean"
    assert got[()]["top1"] == got[("--ensemble", "prob")]["top1"]
    assert got[()]["templates"] == list(SCENES_TEMPLATES)
