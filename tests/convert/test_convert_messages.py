"""An HF checkpoint's id2label become the class names of the converted directory, of `vitlab predict` and of
`vitlab info`; `vitlab convert` names the configuration it built, not the nearest registered name."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from PIL import Image  # noqa: E402

from vitlab.cli import main  # noqa: E402


def test_hf_id2label_are_kept_as_class_names(hf_model, tmp_path, capsys):
    ref = hf_model("ViTForImageClassification", dim=32, heads=2, image_size=32, patch_size=8, num_labels=2,
                   id2label={0: "cat", 1: "dog"}, label2id={"cat": 0, "dog": 1})
    ref.save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "ours")]) == 0
    out = capsys.readouterr().out
    assert "VisionTransformer(img_size=32, patch_size=8, num_classes=2, dim=32, depth=2, num_heads=2" in out
    assert "vit_base_patch16_224, 0.03M" not in out
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["classes"] == ["cat", "dog"]
    Image.new("RGB", (32, 32), (10, 200, 10)).save(tmp_path / "a.png")
    assert main(["predict", "--checkpoint", str(tmp_path / "ours"), str(tmp_path / "a.png")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{tmp_path / 'a.png'}: ") and {"cat", "dog"} == {w for w in line.split() if w.isalpha()}
    assert main(["info", str(tmp_path / "hf")]) == 0
    assert "classes      2 (the checkpoint's: cat, dog)" in capsys.readouterr().out
