"""vitlab serve for a captioning checkpoint: /api/predict gives the caption `vitlab predict` prints for the same image,
/api/attention gives the generated words with one map per word over the image-token grid, each summing to 1 and
equal to what vitlab.explain.captioning draws; the same upload safety as the other endpoints; CLIP and segmentation
checkpoints are still refused in one line."""
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("multipart")
from starlette.testclient import TestClient  # noqa: E402

import vitlab  # noqa: E402
from vitlab.checkpoint import save_model  # noqa: E402
from vitlab.data import load_image  # noqa: E402
from vitlab.errors import VitlabError  # noqa: E402
from vitlab.predict import Predictor  # noqa: E402
from vitlab.serve.app import create_app  # noqa: E402
from vitlab.serve.models import load_served_models  # noqa: E402
from vitlab.tasks import task_for_model, task_of  # noqa: E402
from vitlab.tasks.base import mean_std  # noqa: E402
from vitlab.tasks.captioning import CaptionAugment, caption_tokenizer, generate_captions  # noqa: E402


@pytest.fixture(scope="module")
def lstm_captioner(tiny_captioner, tmp_path_factory):
    """sat_lstm_resnet_micro_64 with fresh weights and the tiny run's tokenizer (soft attention, 8x8 grid)."""
    config = json.loads((tiny_captioner / "config.json").read_text())
    torch.manual_seed(1)
    model = vitlab.create_model("sat_lstm_resnet_micro_64", num_classes=len(config["classes"]), max_len=12).eval()
    return save_model(model, tmp_path_factory.mktemp("serve_lstm") / "sat_tiny", classes=config["classes"],
                      image_size=64, data="scenes", task_extras=config["task_extras"])


@pytest.fixture(scope="module")
def client(tiny_captioner, lstm_captioner, tiny_run):
    served = load_served_models([str(tiny_captioner), str(lstm_captioner), str(tiny_run)])
    with TestClient(create_app(served, workers=1)) as c:
        yield c


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A 96 x 60 noise PNG (not square: squashed to 64 x 64 as `vitlab predict` reads it) and a generated scene."""
    from vitlab.data.scenes import generate_scenes

    d = tmp_path_factory.mktemp("cap_img")
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (60, 96, 3), dtype=np.uint8)).save(d / "noise.png")
    scene = generate_scenes(1, 64, np.random.default_rng([5, 11])).images[0]
    Image.fromarray(scene.permute(1, 2, 0).numpy()).save(d / "scene.png")
    return [d / "noise.png", d / "scene.png"]


def post(client, path, endpoint="predict", model="cap_tiny", name=None):
    data = path.read_bytes() if hasattr(path, "read_bytes") else path
    return client.post(f"/api/{endpoint}", files={"image": (name or getattr(path, "name", "x.png"), data)},
                       data={"model": model})


def explain_reference(run, path):
    """What vitlab.explain.captioning.explain_captions computes for an image file: its caption and maps."""
    model = Predictor.load(str(run)).model
    x, _ = CaptionAugment(*mean_std(model))(load_image(path, model.cfg.img_size)[None], None)
    return generate_captions(model, x, caption_tokenizer(model))[0]


def test_models_say_captioning_and_the_grid(client):
    info = {m["name"]: m for m in client.get("/api/models").json()["models"]}
    cap, lstm = info["cap_tiny"], info["sat_tiny"]
    assert (cap["task"], cap["model"], cap["grid"], cap["image_size"]) == (
        "captioning", "caption_vit_micro_patch8_64", [8, 8], 64)
    assert (cap["decoder"], cap["max_words"], cap["attention"]) == ("transformer", 11, True)
    assert (lstm["task"], lstm["decoder"], lstm["grid"]) == ("captioning", "lstm", [8, 8])
    assert info["digits_tiny"]["task"] == "classification"


@pytest.mark.parametrize("model", ["cap_tiny", "sat_tiny"])
def test_predict_is_the_caption_vitlab_predict_prints(client, images, model, tiny_captioner, lstm_captioner):
    run = {"cap_tiny": tiny_captioner, "sat_tiny": lstm_captioner}[model]
    predictor = Predictor.load(str(run))
    lines = task_of(predictor.model).predict(predictor, [str(p) for p in images])   # `vitlab predict`
    for path, line in zip(images, lines):
        r = post(client, path, model=model)
        assert r.status_code == 200, r.text
        body = r.json()
        assert line == f"{path}: {body['caption']}"
        assert (body["model"], body["task"]) == (model, "captioning")
    assert post(client, images[0], model=model).json()["words"], "the tiny captioner says nothing"


@pytest.mark.parametrize("model", ["cap_tiny", "sat_tiny"])
def test_attention_is_one_map_per_word_as_explain_draws(client, images, model, tiny_captioner, lstm_captioner):
    run = {"cap_tiny": tiny_captioner, "sat_tiny": lstm_captioner}[model]
    for path in images:
        r = post(client, path, "attention", model=model)
        assert r.status_code == 200, r.text
        body = r.json()
        ref = explain_reference(run, path)
        assert (body["task"], body["grid"], body["caption"]) == ("captioning", [8, 8], ref.text)
        assert [w["word"] for w in body["words"]] == ref.words and len(ref.words) >= 2
        assert body["caption"] == post(client, path, model=model).json()["caption"]
        maps = np.array([w["attention"] for w in body["words"]])               # (words, 8, 8)
        assert maps.shape == (len(ref.words), 8, 8)
        np.testing.assert_allclose(maps.sum((1, 2)), 1.0, atol=1e-4)
        np.testing.assert_allclose(maps.reshape(len(maps), -1), ref.attention.double().numpy(), atol=2e-6)
        assert np.abs(maps[0] - maps[1]).max() > 1e-4, "two words with the same map: nothing to click between"
        assert body["image"].startswith("data:image/png;base64,")


@pytest.mark.parametrize("endpoint", ["predict", "attention"])
def test_uploads_are_checked_as_everywhere(client, images, endpoint):
    assert_error(post(client, b"", endpoint, name="e.png"), 400, "the upload 'e.png' is empty")
    assert_error(post(client, b"not an image at all", endpoint, name="t.txt"), 400,
                 "the upload 't.txt' is not an image PIL can read (no valid PNG, JPEG, GIF, BMP, TIFF or WebP header)")
    r = post(client, images[0].read_bytes()[:60], endpoint, name="half.png")
    assert r.status_code == 400 and r.json()["error"].startswith("the upload 'half.png' is a broken image: ")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        r = post(client, header_only_png(10000, 10000), endpoint, name="big.png")
    assert_error(r, 400, "the upload 'big.png' refused (decompression-bomb guard): 10000x10000 is 100000000 "
                 f"pixels, more than the limit of {Image.MAX_IMAGE_PIXELS}; it was not decoded")
    assert_error(post(client, images[0], endpoint, model="../cap_tiny"), 404,
                 "unknown model '../cap_tiny'; loaded: cap_tiny, sat_tiny, digits_tiny")
    r = client.post(f"/api/{endpoint}", content=b"x", headers={"content-type": "text/plain"})
    assert_error(r, 415, "send multipart/form-data with the file field 'image' and the field 'model'")


def test_clip_and_segmentation_are_still_refused(tmp_path):
    save_model(vitlab.create_model("unet_small_64"), tmp_path / "seg")
    save_model(vitlab.create_model("clip_micro_patch8_64"), tmp_path / "clip")
    for name in ("seg", "clip"):
        task = task_for_model("unet_small_64" if name == "seg" else "clip_micro_patch8_64").name
        with pytest.raises(VitlabError) as e:
            load_served_models([str(tmp_path / name)])
        assert str(e.value) == (f"{tmp_path / name}: a {task} model; vitlab serve shows classification, detection "
                                f"and captioning checkpoints only (the {task} views are not built yet)")


def test_a_captioner_without_its_tokenizer_is_refused_at_start():
    with pytest.raises(VitlabError, match=r"^caption_vit_micro_patch8_64: no tokenizer \(a fresh model or a "
                                          r"checkpoint without task_extras\); pass the run directory"):
        load_served_models(["caption_vit_micro_patch8_64"])


def assert_error(r, status, message):
    assert r.status_code == status, r.text
    assert r.json() == {"error": message}


def header_only_png(width, height):
    """A PNG whose IHDR claims width x height (8-bit RGB) with one tiny IDAT: a few dozen bytes."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))
