"""ONNX export: the graph ONNX Runtime runs gives the eager logits at two batch sizes, carries what prediction needs,
and `vitlab export` / `vitlab predict --runtime onnx` work end to end."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnx", reason="ONNX export needs the onnx package (vitlab[onnx])")
pytest.importorskip("onnxruntime", reason="ONNX inference needs onnxruntime (vitlab[onnx])")

import vitlab  # noqa: E402
from vitlab.checkpoint import save_model  # noqa: E402
from vitlab.cli import main  # noqa: E402
from vitlab.errors import VitlabError  # noqa: E402
from vitlab.export import OnnxModel, export_onnx, load_onnx_predictor  # noqa: E402
from vitlab.export.onnx import max_logit_difference  # noqa: E402
from vitlab.predict import Predictor  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = vitlab.create_model("vit_micro_patch4_32", num_classes=5).eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(model, path)
    return model, path


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_runtime_logits_equal_eager(tiny, batch):
    model, path = tiny
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = model(x)
    got = OnnxModel(path)(x)
    assert got.shape == (batch, 5)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["deit_tiny_distilled_patch16_224", "vit_micro_patch2_8"])
def test_other_vit_family_members_export(tmp_path, name):
    if name.startswith("deit"):
        model = vitlab.create_model(name, num_classes=3, img_size=32, depth=2).eval()   # eval: averaged two heads
    else:
        model = vitlab.create_model(name, num_classes=3).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    diffs = max_logit_difference(model, path, batch_sizes=(1, 2))
    assert max(diffs.values()) < 1e-4


def test_metadata_makes_the_file_a_predictor(tiny, tmp_path):
    model, path = tiny
    meta = OnnxModel(path).metadata
    assert meta["model"] == "vit_micro_patch4_32" and meta["image_size"] == 32 and meta["num_classes"] == 5
    assert meta["classes"] == ["0", "1", "2", "3", "4"] and meta["mean"] == list(model.cfg.mean)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    torch_pred, onnx_pred = Predictor(model, meta["classes"], 32, _normalize(model)), load_onnx_predictor(path)
    torch.testing.assert_close(onnx_pred.logits(images), torch_pred.logits(images), atol=1e-4, rtol=0)


def _normalize(model):
    from vitlab.data.augment import Normalize

    return Normalize(tuple(model.cfg.mean), tuple(model.cfg.std))


def test_cli_export_then_predict_with_onnx_runtime(tmp_path, capsys):
    torch.manual_seed(0)
    model = vitlab.create_model("vit_micro_patch4_32", num_classes=3)
    run = tmp_path / "run"
    save_model(model, run, classes=["cat", "dog", "owl"])
    image = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype("uint8")).save(image)

    assert main(["export", str(run), "--onnx"]) == 0
    out = capsys.readouterr().out
    assert (run / "model.onnx").is_file() and "batch 1: max |onnxruntime - torch|" in out
    assert main(["predict", "--checkpoint", str(run), str(image), "--top-k", "2"]) == 0
    eager = capsys.readouterr().out
    assert main(["predict", "--checkpoint", str(run), "--runtime", "onnx", str(image), "--top-k", "2"]) == 0
    assert capsys.readouterr().out == eager          # same classes, same probabilities to 3 decimals
    assert json.loads(OnnxModel(run / "model.onnx").session.get_modelmeta().custom_metadata_map["vitlab"])[
        "classes"] == ["cat", "dog", "owl"]


def test_bad_inputs_are_one_line_errors(tmp_path, tiny, capsys):
    _, path = tiny
    with pytest.raises(VitlabError, match="no model.onnx; write it with `vitlab export"):
        load_onnx_predictor(tmp_path)
    with pytest.raises(VitlabError, match="pass --runtime onnx"):
        Predictor.load(path)
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(VitlabError, match="not a readable ONNX model"):
        OnnxModel(tmp_path / "junk.onnx")
    assert main(["predict", "--checkpoint", str(tmp_path / "missing.onnx"), "--runtime", "onnx", "x.png"]) == 2
    assert "no such ONNX file" in capsys.readouterr().err


def test_module_docstring_example_runs(tmp_path, monkeypatch):
    """The three lines at the top of vitlab/export/onnx.py, run as written (in a scratch directory)."""
    import vitlab.export.onnx as onnx_module

    example = "\n".join(line.strip() for line in onnx_module.__doc__.splitlines()[2:5])
    assert example.startswith("path = export_onnx(model") and "OnnxPredictor.load(" in example
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = vitlab.create_model("vit_micro_patch4_32", num_classes=3).eval()
    Image.fromarray((np.random.default_rng(1).random((48, 40, 3)) * 255).astype("uint8")).save("cat.png")
    scope = {"model": model, "export_onnx": export_onnx, "OnnxPredictor": onnx_module.OnnxPredictor}
    exec(compile(example.replace("predictor.predict(", "result = predictor.predict("), "onnx.py", "exec"), scope)

    assert isinstance(scope["predictor"], onnx_module.OnnxPredictor)
    eager = Predictor(model, ["0", "1", "2"], 32, _normalize(model)).predict(["cat.png"])
    got = scope["result"]
    assert [name for name, _ in got[0]] == [name for name, _ in eager[0]]
    np.testing.assert_allclose([p for _, p in got[0]], [p for _, p in eager[0]], atol=1e-5)


def test_onnx_predictor_load_refuses_bf16(tiny):
    from vitlab.export import OnnxPredictor

    with pytest.raises(VitlabError, match="exported fp32 graph: use --precision fp32"):
        OnnxPredictor.load(tiny[1], precision="bf16")
