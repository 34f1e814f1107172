"""`vitlab explain` of a CLIP checkpoint: the text-conditioned map and the similarity matrix against hand
computations, the files the CLI writes, and the --text errors."""
from __future__ import annotations

import json

import torch
import torch.nn.functional as F

import vitlab
from vitlab.checkpoint import load_model, save_model
from vitlab.cli import main
from vitlab.explain.clip import explain_clip, similarity_matrix, text_similarity_maps
from vitlab.models.vit import VisionTransformer
from vitlab.text.tokenizer import build_word_level

CAPTIONS = ["a red circle", "a blue square", "a green triangle left of a red circle"]
CLASSES = ["circle", "square", "triangle"]


def _tiny_clip(tmp_path, classes=CLASSES):
    torch.manual_seed(0)
    tok = build_word_level(CAPTIONS, max_length=12)
    model = vitlab.create_model("clip_micro_patch8_64", img_size=32, vision_dim=32, vision_depth=2, vision_heads=2,
                                text_dim=32, text_depth=2, text_heads=2, embed_dim=16, context_length=12,
                                vocab_size=tok.vocab_size, eos_id=tok.eos_id).eval()
    extras = {"tokenizer": tok.to_dict(), "templates": ["a {}", "a red {}"], **({"classes": classes} if classes
                                                                                   else {})}
    save_model(model, tmp_path / "clip", task_extras=extras)
    return load_model(tmp_path / "clip"), tok


def _images(tmp_path, n=2):
    from PIL import Image

    torch.manual_seed(1)
    paths = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8).numpy()).save(path)
        paths.append(str(path))
    return paths


def test_text_map_equals_hand_computation(tmp_path):
    model, tok = _tiny_clip(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    ids, _ = tok.encode_batch(["a red circle", "a blue square", "a triangle"])
    maps = text_similarity_maps(model, x, ids)
    assert maps.shape == (2, 3, 4, 4)                                     # 32 px / 8 px patches
    with torch.no_grad():                                                 # by hand: the tower's layers one by one
        v = model.visual
        tokens = v.norm(v.blocks(v.norm_pre(VisionTransformer.embed(v, x))))    # (2, 1 + 16, 32), final norm
        patches = F.normalize(model.visual_projection(tokens[:, 1:]), dim=-1)                   # (2, 16, 16)
        texts = F.normalize(model.encode_text(ids), dim=-1)                                      # (3, 16)
    for i in range(2):
        for t in range(3):
            hand = torch.stack([patches[i, n] @ texts[t] for n in range(16)]).view(4, 4)
            torch.testing.assert_close(maps[i, t], hand, atol=1e-5, rtol=0)
    # the [CLS] token through the same path is the image embedding: the map's path is the embedding's
    torch.testing.assert_close(model.visual_projection(tokens[:, 0]), model.encode_image(x), atol=1e-5, rtol=0)


def test_similarity_matrix_is_logits_over_scale(tmp_path):
    model, tok = _tiny_clip(tmp_path)
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
    x = torch.randn(3, 3, 32, 32)
    ids, _ = tok.encode_batch(CAPTIONS)
    texts = F.normalize(model.encode_text(ids), dim=-1)
    with torch.no_grad():
        ref = model(x, ids)["logits_per_image"] / model.scale()
    torch.testing.assert_close(similarity_matrix(model, x, texts), ref, atol=1e-5, rtol=0)


def test_explain_clip_summary_matches_the_model(tmp_path):
    model, tok = _tiny_clip(tmp_path)
    paths = _images(tmp_path)
    summary = explain_clip(model, paths, tmp_path / "out", texts=["a red circle", "a blue square"])
    from vitlab.data import load_image
    from vitlab.explain.report import model_input

    x = model_input(model, torch.stack([load_image(p, 32) for p in paths]))
    ids, _ = tok.encode_batch(["a red circle", "a blue square"])
    with torch.no_grad():
        ref = model(x, ids)["logits_per_image"] / model.scale()
    torch.testing.assert_close(torch.tensor(summary["similarity"]), ref, atol=1e-4, rtol=0)
    assert summary["prompts"] == ["a red circle", "a blue square"]
    assert summary["attention_map"]["file"] == "rollout.png" and "rollout" in summary["attention_map"]["kind"]
    for name in ("rollout.png", "text_maps.png", "similarity.png", "index.html", "summary.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert "a blue square" in (tmp_path / "out" / "index.html").read_text()


def test_cli_writes_the_files_and_defaults_to_class_prompts(tmp_path, capsys):
    _tiny_clip(tmp_path)
    paths = _images(tmp_path, 1)
    out = tmp_path / "cli"
    assert main(["explain", "--checkpoint", str(tmp_path / "clip"), *paths, "--text", "a red circle",
                 "--text", "a square", "--out", str(out)]) == 0
    assert "best prompt" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["prompts"] == ["a red circle", "a square"]
    assert (out / "text_maps.png").is_file() and (out / "similarity.png").is_file()
    assert main(["explain", "--checkpoint", str(tmp_path / "clip"), *paths, "--out", str(tmp_path / "d")]) == 0
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["prompts"] == CLASSES


def test_text_refused_for_other_models_and_required_without_classes(tmp_path, capsys):
    save_model(vitlab.create_model("vit_micro_patch4_32", num_classes=3), tmp_path / "vit")
    paths = _images(tmp_path, 1)
    assert main(["explain", "--checkpoint", str(tmp_path / "vit"), *paths, "--text", "a cat",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vitlab explain: error: --text: only for CLIP (contrastive) checkpoints; this one is "
                   "classification"]
    assert not (tmp_path / "o").exists()
    _tiny_clip(tmp_path, classes=None)
    assert main(["explain", "--checkpoint", str(tmp_path / "clip"), *paths, "--out", str(tmp_path / "o")]) == 2
    assert "--text is required" in capsys.readouterr().err
