"""vitlab serve for a DETR checkpoint: /api/predict gives what `vitlab predict` finds, /api/attention gives each
detection's last-decoder-layer cross-attention as vitlab.explain.detr records it; threshold validation; the same
upload safety as the classification endpoints."""
import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("multipart")
from starlette.testclient import TestClient  # noqa: E402

from vitlab.errors import VitlabError  # noqa: E402
from vitlab.explain.detr import detected_queries, record_detr_attention  # noqa: E402
from vitlab.explain.report import model_input  # noqa: E402
from vitlab.predict import Predictor  # noqa: E402
from vitlab.serve.app import create_app  # noqa: E402
from vitlab.serve.models import load_served_models  # noqa: E402
from vitlab.tasks.detection.task import detect_files  # noqa: E402

CLASSES = ["circle", "square", "triangle", "star", "cross", "ring"]


@pytest.fixture(scope="module")
def served(tiny_detr, tiny_run):
    return load_served_models([str(tiny_detr), str(tiny_run)])


@pytest.fixture(scope="module")
def client(served):
    with TestClient(create_app(served, workers=1)) as c:
        yield c


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    """A 96 x 60 (W x H) noise PNG: not square, so boxes must be scaled per axis to the upload's pixels."""
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("detr_img") / "noise.png"
    Image.fromarray(rng.integers(0, 256, (60, 96, 3), dtype=np.uint8)).save(path)
    return path


def post(client, path_or_bytes, endpoint="predict", name="noise.png", **fields):
    data = path_or_bytes.read_bytes() if hasattr(path_or_bytes, "read_bytes") else path_or_bytes
    return client.post(f"/api/{endpoint}", files={"image": (name, data)}, data={"model": "detr_tiny", **fields})


def assert_error(r, status, message):
    assert r.status_code == status, r.text
    assert r.json() == {"error": message}


def test_models_say_the_task_and_the_grid(client):
    info = {m["name"]: m for m in client.get("/api/models").json()["models"]}
    detr, vit = info["detr_tiny"], info["digits_tiny"]
    assert (detr["task"], detr["model"], detr["classes"], detr["image_size"]) == (
        "detection", "detr_micro_64", CLASSES, 64)
    assert (detr["grid"], detr["heads"], detr["layers"], detr["num_queries"]) == ([8, 8], 4, 2, 10)
    assert vit["task"] == "classification" and vit["grid"] == [4, 4]


def test_predict_equals_vitlab_predict(client, tiny_detr, image_file):
    reference = Predictor.load(tiny_detr)
    for threshold in ("0.5", "0.0", None):
        fields = {} if threshold is None else {"threshold": threshold}
        r = post(client, image_file, **fields)
        assert r.status_code == 200, r.text
        body = r.json()
        t = 0.5 if threshold is None else float(threshold)
        ((original, det),) = detect_files(reference, [str(image_file)], t)
        assert (body["task"], body["threshold"], body["image_size"]) == ("detection", t, [60, 96])
        found = body["detections"]
        assert all(set(d) == {"class", "index", "score", "box_xyxy"} for d in found)
        assert [d["index"] for d in found] == det["labels"].tolist()
        assert [d["class"] for d in found] == [CLASSES[i] for i in det["labels"].tolist()]
        np.testing.assert_allclose([d["score"] for d in found], det["scores"].numpy(), atol=1e-6)
        np.testing.assert_allclose(np.array([d["box_xyxy"] for d in found]).reshape(-1, 4), det["boxes"].numpy(),
                                   atol=1e-3)
        assert all(d["score"] > t for d in found)
        if t == 0.0:
            assert len(found) == 10                                     # every query
        else:
            assert 0 < len(found) < 10, "the fixture should give detections on both sides of 0.5"


def test_attention_equals_explain_detr(client, served, image_file):
    r = post(client, image_file, "attention")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["grid"], body["heads"], body["image_size"], body["threshold"]) == ([8, 8], 4, [60, 96], 0.5)
    assert body["below_threshold"] is False
    # the reference: the image squashed to 64 x 64 as `vitlab predict` does, recorded by vitlab.explain.detr
    model = served["detr_tiny"].model
    small = Image.open(image_file).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(small).copy()).permute(2, 0, 1)[None]
    rec = record_detr_attention(model, model_input(model, x))
    det = detected_queries(rec.outputs, 0.5, (60, 96), max_objects=10)[0]
    found = body["detections"]
    assert [d["query"] for d in found] == det["queries"].tolist() and len(found) > 0
    np.testing.assert_allclose([d["score"] for d in found], det["scores"].numpy(), atol=1e-6)
    np.testing.assert_allclose([d["box_xyxy"] for d in found], det["boxes"].numpy(), atol=1e-3)
    assert [d["class"] for d in found] == [CLASSES[i] for i in det["labels"].tolist()]
    for d, q in zip(found, det["queries"].tolist()):
        mean, heads = np.array(d["attention"]), np.array(d["attention_heads"])
        assert mean.shape == (8, 8) and heads.shape == (4, 8, 8)
        assert mean.sum() == pytest.approx(1.0, abs=1e-4)
        np.testing.assert_allclose(heads.sum((1, 2)), 1.0, atol=1e-4)       # each head: a softmax row
        np.testing.assert_allclose(heads.mean(0), mean, atol=2e-6)
        np.testing.assert_allclose(heads, rec.cross[0, :, q].reshape(4, 8, 8).numpy(), atol=1e-6)
    # the maps differ between queries (the fixture's point): the page has something to switch between
    assert np.abs(np.array(found[0]["attention"]) - np.array(found[-1]["attention"])).max() > 1e-3
    # the same kept detections, in the same order, as /api/predict
    predicted = post(client, image_file).json()["detections"]
    np.testing.assert_allclose([d["score"] for d in predicted], [d["score"] for d in found], atol=1e-5)
    np.testing.assert_allclose([d["box_xyxy"] for d in predicted], [d["box_xyxy"] for d in found], atol=1e-3)


def test_no_detection_above_the_threshold(client, image_file):
    assert post(client, image_file, threshold="1").json()["detections"] == []
    body = post(client, image_file, "attention", threshold="1").json()
    assert body["below_threshold"] is True and len(body["detections"]) == 3          # the best queries, marked
    scores = [d["score"] for d in body["detections"]]
    assert scores == sorted(scores, reverse=True) and scores[0] < 1


@pytest.mark.parametrize("endpoint", ["predict", "attention"])
@pytest.mark.parametrize("value", ["abc", "-0.1", "1.5", "nan", "inf", "0x1"])
def test_bad_thresholds(client, image_file, endpoint, value):
    assert_error(post(client, image_file, endpoint, threshold=value), 400,
                 f"threshold must be a number in [0, 1], got {value!r}")


def test_threshold_in_the_query_string_for_attention(client, image_file):
    r = client.post("/api/attention?threshold=0", files={"image": ("n.png", image_file.read_bytes())},
                    data={"model": "detr_tiny"})
    assert r.status_code == 200 and len(r.json()["detections"]) == 10


def test_upload_safety_for_a_detector(client):
    for endpoint in ("predict", "attention"):
        assert_error(post(client, b"just some text", endpoint, "notes.txt"), 400, "the upload 'notes.txt' is not an "
                     "image PIL can read (no valid PNG, JPEG, GIF, BMP, TIFF or WebP header)")
        assert_error(post(client, b"", endpoint, "e.png"), 400, "the upload 'e.png' is empty")
        b = io.BytesIO()
        Image.new("RGB", (64, 64), (1, 2, 3)).save(b, "PNG")
        r = post(client, b.getvalue()[:60], endpoint, "half.png")
        assert r.status_code == 400 and r.json()["error"].startswith("the upload 'half.png' is a broken image: ")
        assert "Traceback" not in r.text
        bomb = header_only_png(10000, 10000)
        with warnings.catch_warnings():                 # PIL's warning (once per place): we refuse before it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            r = post(client, bomb, endpoint, "big.png")
        assert_error(r, 400, "the upload 'big.png' refused (decompression-bomb guard): 10000x10000 is 100000000 "
                     f"pixels, more than the limit of {Image.MAX_IMAGE_PIXELS}; it was not decoded")
        r = client.post(f"/api/{endpoint}", files={"image": ("a.png", b.getvalue())},
                        data={"model": "../detr_tiny"})
        assert_error(r, 404, "unknown model '../detr_tiny'; loaded: detr_tiny, digits_tiny")


def test_other_tasks_are_still_refused(tmp_path):
    import vitlab
    from vitlab.checkpoint import save_model

    save_model(vitlab.create_model("unet_small_64"), tmp_path / "seg")
    with pytest.raises(VitlabError, match=r"^.*seg: a segmentation model; vitlab serve shows classification, "
                                          r"detection and captioning checkpoints only \(the segmentation views are "
                                          r"not built yet\)$"):
        load_served_models([str(tmp_path / "seg")])


def header_only_png(width, height):
    """A PNG whose IHDR claims width x height (8-bit RGB) with one tiny IDAT: a few dozen bytes."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))
