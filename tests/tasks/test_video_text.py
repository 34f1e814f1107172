"""The text-video task end to end: the objective's loss falls, `vitlab train` on tiny generated clips writes the
promised metrics (and eval reproduces them), a stopped run resumes to the same weights as an uninterrupted one,
explain writes its pictures (the max-pool share checked by hand), retrieval and twin order against hand
computations, and the one-line refusals."""
from __future__ import annotations

import json

import pytest
import torch

import vitlab
from vitlab.checkpoint import load_model, read_weights
from vitlab.cli import main
from vitlab.data.videos import build_video_text_data
from vitlab.errors import VitlabError
from vitlab.explain.video import frame_weights
from vitlab.models.mmt import max_margin_ranking_loss
from vitlab.tasks.video_text import VideoTextObjective, retrieval_scores, twin_order_accuracy
from vitlab.text.tokenizer import build_word_level

TRAIN = ["train", "--model", "mmt_micro_32", "--data", "videos:16", "--batch-size", "8", "--lr", "3e-3",
         "--no-report"]
KEYS = {f"val_{d}_{k}" for d in ("t2v", "v2t") for k in ("r1", "r5", "r10", "median_rank", "mean_rank")} | {
    "val_median_rank", "val_mean_rank", "val_twin_order_acc"}


@pytest.fixture(scope="module")
def clips():
    return build_video_text_data("videos:8", 32, seed=0)


def test_loss_falls_on_a_fixed_batch_and_parts_are_the_cosines(clips):
    torch.manual_seed(0)
    tok = build_word_level(clips.train.captions, max_length=24)
    ids, mask = tok.encode_batch(clips.train.captions)
    model = vitlab.create_model("mmt_micro_32", vocab_size=tok.vocab_size, dropout=0.0)
    x = (clips.train.frames.float() / 255 - 0.5) / 0.5
    opt, objective, losses = torch.optim.AdamW(model.parameters(), 3e-3), VideoTextObjective(), []
    for _ in range(25):
        loss, parts = objective(model, x, (ids, mask))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.4 * losses[0]
    with torch.no_grad():
        loss, parts = objective(model, x, (ids, mask))
        sim = model(x, ids, mask)["similarity"]                                   # (8, 8)
    assert set(parts) == {"max_margin", "pos_cosine", "neg_cosine"}
    torch.testing.assert_close(parts["max_margin"], max_margin_ranking_loss(sim, margin=0.05))
    torch.testing.assert_close(parts["pos_cosine"], sim.diagonal().mean())
    torch.testing.assert_close(parts["neg_cosine"], (sim.sum() - sim.diagonal().sum()) / 56)
    assert parts["pos_cosine"] > parts["neg_cosine"] + 0.1


def test_retrieval_scores_and_twin_order_by_hand():
    # clip i (rows) x caption j (columns); captions 1 and 2 are the same text, so clips 1 and 2 both match them
    sim = torch.tensor([[0.1, 0.9, 0.0],
                        [0.5, 0.2, 0.3],
                        [0.4, 0.1, 0.1]])
    m = retrieval_scores(sim, ["a", "b", "b"], prefix="")
    # t2v: caption 0 ranks clips [1, 2, 0] -> clip 0 at 3; captions 1, 2 find clip 1 or 2 at 2 and 1
    assert (m["t2v_r1"], m["t2v_median_rank"], m["t2v_mean_rank"]) == (pytest.approx(1 / 3), 2.0, 2.0)
    # v2t: clip 0 ranks captions [1, 0, 2] -> 0 at 2; clip 1 [0, 2, 1] -> 2 at 2;
    # clip 2 [0, 1, 2] (a tie: the lower index first) -> 1 at 2
    assert (m["v2t_r1"], m["v2t_r5"], m["v2t_mean_rank"]) == (0.0, 1.0, 2.0)
    # twins (0, 1): caption 0 scores its own clip 0.1 < the twin's 0.5; caption 1 its own 0.2 < the twin's 0.9
    assert twin_order_accuracy(sim, [1, 0, -1]) == 0.0
    tie = torch.tensor([[0.3, 0.3], [0.3, 0.8]])     # caption 0: a tie (half); caption 1: own 0.8 > 0.3
    assert twin_order_accuracy(tie, [1, 0]) == 0.75
    assert twin_order_accuracy(tie, [-1, -1]) is None


def test_train_eval_resume_and_explain_from_the_cli(tmp_path, capsys):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main([*TRAIN, "--epochs", "2", "--out", str(straight)]) == 0
    metrics = json.loads((straight / "metrics.json").read_text())
    assert {k for k in metrics if k.startswith("val_")} == KEYS | {"val_images"}      # val_images: the run's count
    assert metrics["task"] == "video_text" and metrics["primary_metric"] == "val_t2v_r1"
    assert metrics["val_median_rank"] == metrics["val_t2v_median_rank"] and metrics["val_images"] == 4
    assert 0 <= metrics["val_t2v_r1"] <= metrics["val_t2v_r5"] <= metrics["val_t2v_r10"] == 1.0    # 4 val clips
    config = json.loads((straight / "config.json").read_text())
    assert config["task_extras"]["num_frames"] == 6 and "tokenizer" in config["task_extras"]
    rows = (straight / "metrics.csv").read_text().splitlines()
    assert "train_max_margin" in rows[0] and "val_t2v_r1" in rows[0] and len(rows) == 3

    # a stopped run resumed gives the uninterrupted run's weights, bit for bit
    assert main([*TRAIN, "--epochs", "2", "--stop-at", "1", "--out", str(stopped)]) == 0
    assert main(["train", "--resume", str(stopped), "--stop-at", "2"]) == 0
    a, b = read_weights(straight / "model.safetensors"), read_weights(stopped / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # eval of the checkpoint on the same spec reproduces the run's final metrics
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(straight), "--data", "videos:16", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["task"] == "video_text" and evaluated["images"] == 4
    for key in ("val_t2v_r1", "val_t2v_r5", "val_v2t_r1", "val_mean_rank", "val_twin_order_acc"):
        assert evaluated[key] == metrics[key]

    out = tmp_path / "explain"
    assert main(["explain", "--checkpoint", str(straight), "--samples", "2", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"2 figures -> {out / 'index.html'}")
    assert (out / "frame_weights.png").stat().st_size > 5000 and (out / "similarity.png").stat().st_size > 5000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips"] == ["videos:16 val #0", "videos:16 val #3"] and summary["rows"] == ["layer 1", "layer 2"]
    model = load_model(straight)
    val = build_video_text_data("videos:16", 32, seed=0).val
    agg = model.agg_attention((val.frames[[0, 3]].float() / 255 - 0.5) / 0.5)                # (2, depth, T)
    torch.testing.assert_close(torch.tensor(summary["frame_weights"]), agg, atol=1e-5, rtol=0)


def test_max_pool_share_by_hand_and_reversed_for_a_twin(clips):
    torch.manual_seed(0)
    model = vitlab.create_model("coll_maxpool_micro_32").eval()
    x = (clips.val.frames[:2].float() / 255 - 0.5) / 0.5                           # clip 0 and its twin, clip 1
    assert clips.val.twin[0] == 1
    weights, rows, _ = frame_weights(model, x)
    with torch.no_grad():
        feats = model.frame_features(x)                                             # (2, T, F)
    for i in range(2):                     # each channel's max shared by the frames that hold it
        hand = torch.zeros(6)
        for c in range(feats.shape[2]):
            holders = [t for t in range(6) if feats[i, t, c] == feats[i, :, c].max()]
            hand[holders] += 1 / len(holders) / feats.shape[2]
        torch.testing.assert_close(weights[i, 0], hand)
    assert rows == ["max-pool"]
    torch.testing.assert_close(weights[1, 0], weights[0, 0].flip(0))                # same frames, reversed order


def test_refusals_are_one_line(tmp_path, capsys):
    out = str(tmp_path / "r")
    cases = [
        (["train", "--model", "mmt_micro_32", "--data", "digits", "--out", out],
         "digits: mmt_micro_32 is a text-video retrieval model; its data is 'videos', 'videos:N' or a folder of "
         "videos with an MSR-VTT captions JSON (DIR or DIR:captions.json)"),
        (["train", "--model", "vit_micro_patch2_8", "--data", "videos:8", "--out", out],
         "videos:8 is captioned video clips for text-video retrieval: train a video_text model on it "
         "(mmt_micro_32, mmt_maxpool_micro_32, coll_maxpool_micro_32)"),
        (["train", "--model", "coll_maxpool_micro_32", "--data", "videos:8", "--batch-size", "1", "--out", out],
         "--batch-size 1: the ranking loss compares each clip with the other clips of its batch; give at least 2"),
        (["train", "--model", "mmt_micro_32", "--data", "videos:8", "--mixup", "0.2", "--out", out],
         "--mixup: classification-only; mmt_micro_32 is a text-video retrieval model (its augmentation is none: "
         "a flip or crop would falsify captions that say left/right)"),
        (["explain", "--checkpoint", "mmt_micro_32", "--data", "shapes", "--out", out],
         "shapes: mmt_micro_32 is a text-video retrieval model; its data is 'videos', 'videos:N' or a folder of "
         "videos with an MSR-VTT captions JSON (DIR or DIR:captions.json)"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err == f"vitlab {argv[0]}: error: {message}", err
    with pytest.raises(VitlabError, match="no classes to predict"):
        vitlab.tasks.get_task("video_text").predict(None, [])


def test_eval_reads_the_runs_frame_count(tmp_path, capsys):
    """A run trained on 4 frames a clip (not the default 6) evaluates on 4-frame clips: eval takes the count from
    the checkpoint and reproduces the run's final metrics."""
    run = tmp_path / "four"
    assert main([*TRAIN, "--epochs", "1", "--model-arg", "num_frames=4", "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert json.loads((run / "config.json").read_text())["task_extras"]["num_frames"] == 4
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--data", "videos:16", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    for key in ("val_t2v_r1", "val_v2t_r1", "val_mean_rank", "val_twin_order_acc"):
        assert evaluated[key] == metrics[key]
