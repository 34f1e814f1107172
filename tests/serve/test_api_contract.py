"""vitlab serve's JSON API, endpoint by endpoint, against hand computations from the returned tensors and against
the library's Predictor (Starlette's TestClient, a tiny trained checkpoint)."""
import base64
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("python_multipart")
from starlette.testclient import TestClient  # noqa: E402

from vitlab.data import build_data  # noqa: E402
from vitlab.data.decode import load_image  # noqa: E402
from vitlab.data.shapes import SHAPE_CLASSES  # noqa: E402
from vitlab.explain.recording import record_attention  # noqa: E402
from vitlab.explain.report import model_input  # noqa: E402
from vitlab.predict import Predictor  # noqa: E402
from vitlab.serve.app import create_app  # noqa: E402
from vitlab.serve.models import load_served_models, png_bytes  # noqa: E402


@pytest.fixture(scope="module")
def served(tiny_run):
    return load_served_models([str(tiny_run)])


@pytest.fixture(scope="module")
def client(served):
    with TestClient(create_app(served)) as c:
        yield c


@pytest.fixture(scope="module")
def digit_png():
    return png_bytes(build_data("digits", 8).val.images[0])


def post(client, url, png, **fields):
    return client.post(url, files={"image": ("digit.png", png, "image/png")}, data={"model": "digits_tiny", **fields})


def full_tensor(answer):
    t = answer["attention"]
    values = np.frombuffer(base64.b64decode(t["data"]), dtype="<f4")
    return values.reshape(t["shape"]).astype(np.float64)


def hand_rollout(attn, fusion, discard):
    """Abnar & Zuidema by hand in numpy: fuse heads, zero the lowest `discard` share, add I, rows to 1, multiply."""
    L, H, N, _ = attn.shape
    flow = np.eye(N)
    for layer in attn:
        a = {"mean": layer.mean(0), "max": layer.max(0), "min": layer.min(0)}[fusion]
        k = int(N * N * discard)
        if k:
            flat = a.flatten()
            flat[np.argsort(flat, kind="stable")[:k]] = 0
            a = flat.reshape(N, N)
        a = a + np.eye(N)
        flow = (a / a.sum(-1, keepdims=True)) @ flow
    heat = flow[0, 1:]
    return (heat / heat.max()).reshape(4, 4)


def test_health_and_models(client, tiny_run):
    assert client.get("/api/health").json() == {"status": "ok", "models": 1, "workers": len(os.sched_getaffinity(0))}
    r = client.get("/api/models")
    assert r.status_code == 200 and str(tiny_run.parent) not in r.text          # a name, never a filesystem path
    body = r.json()
    assert body["max_upload_bytes"] == 10 * 2**20
    (info,) = body["models"]
    assert {k: info[k] for k in ("name", "model", "grid", "layers", "heads", "num_prefix_tokens", "image_size")} == {
        "name": "digits_tiny", "model": "vit_micro_patch2_8", "grid": [4, 4], "layers": 2, "heads": 4,
        "num_prefix_tokens": 1, "image_size": 8}
    assert info["classes"] == [str(i) for i in range(10)] and info["attention"] and info["validation_images"]


def test_predict_equals_the_predictor(client, tiny_run, digit_png):
    r = post(client, "/api/predict", digit_png)
    assert r.status_code == 200 and r.json()["model"] == "digits_tiny"
    top = r.json()["top_k"]
    probs = Predictor.load(tiny_run).logits(load_image(digit_png, 8).unsqueeze(0)).softmax(-1)[0]
    values, indices = probs.topk(5)
    assert [p["index"] for p in top] == indices.tolist()
    assert [p["class"] for p in top] == [str(i) for i in indices.tolist()]
    np.testing.assert_allclose([p["probability"] for p in top], values.tolist(), atol=1e-6)
    assert len(post(client, "/api/predict", digit_png, top_k="3").json()["top_k"]) == 3
    assert post(client, "/api/predict", digit_png, top_k="0").json() == {
        "error": "top_k must be an integer in [1, 1000], got '0'"}


def test_attention_answer_against_hand_computations(client, served, digit_png):
    r = post(client, "/api/attention?full=1", digit_png)
    assert r.status_code == 200
    d = r.json()
    attn = full_tensor(d)                                                  # (layers, heads, 17, 17)
    assert attn.shape == (2, 4, 17, 17) and d["grid"] == [4, 4] and d["num_prefix_tokens"] == 1
    model = served["digits_tiny"].model
    _, recorded = record_attention(model, model_input(model, load_image(digit_png, 8).unsqueeze(0)))
    np.testing.assert_allclose(attn, torch.stack([a[0] for a in recorded]).double().numpy(), atol=1e-6)
    np.testing.assert_allclose(attn.sum(-1), 1.0, atol=1e-5)               # softmax rows
    # [CLS] maps: row 0 of each layer/head over the 16 patch columns
    np.testing.assert_allclose(d["cls_attention"], attn[:, :, 0, 1:].reshape(2, 4, 4, 4), atol=1e-5)
    np.testing.assert_allclose(d["rollout"], hand_rollout(attn, "mean", 0.0), atol=1e-5)
    # mean attention distance: patch-to-patch rows renormalised, times centre distances in pixels (2 px patches)
    rc = np.array([(i // 4, i % 4) for i in range(16)], dtype=np.float64)
    dist = np.linalg.norm(rc[:, None] - rc[None], axis=-1) * 2
    pp = attn[:, :, 1:, 1:] / attn[:, :, 1:, 1:].sum(-1, keepdims=True)
    np.testing.assert_allclose(d["attention_distance"], (pp * dist).sum(-1).mean(-1), atol=1e-4)
    assert np.array(d["patch_logits"]).shape == (10, 4, 4)
    sim = np.array(d["pos_embed_similarity"])
    assert sim.shape == (4, 4, 4, 4)
    np.testing.assert_allclose([sim[r, c, r, c] for r in range(4) for c in range(4)], 1, atol=1e-5)  # self: cos 1
    # the same top-k as /api/predict; the probabilities to float rounding (the recording path computes the
    # attention explicitly, predict runs the fused kernel: the 6th decimal may differ)
    plain = post(client, "/api/predict", digit_png).json()["top_k"]
    assert [t["class"] for t in d["top_k"]] == [t["class"] for t in plain]
    np.testing.assert_allclose([t["probability"] for t in d["top_k"]], [t["probability"] for t in plain], atol=1e-5)
    assert Image.open(io.BytesIO(base64.b64decode(d["image"].split(",", 1)[1]))).size == (8, 8)
    assert "attention" not in post(client, "/api/attention", digit_png).json()     # only with ?full=1


def test_rollout_controls(client, digit_png):
    attn = full_tensor(post(client, "/api/attention?full=1", digit_png).json())
    for fusion, discard in (("max", 0.5), ("min", 0.0), ("mean", 0.9)):
        d = post(client, f"/api/attention?head_fusion={fusion}&discard_ratio={discard}", digit_png).json()
        assert (d["head_fusion"], d["discard_ratio"]) == (fusion, discard)
        np.testing.assert_allclose(d["rollout"], hand_rollout(attn, fusion, discard), atol=1e-5)
    assert post(client, "/api/attention?discard_ratio=1", digit_png).json() == {
        "error": "discard_ratio must be in [0, 1), got 1.0"}
    assert post(client, "/api/attention?head_fusion=median", digit_png).json() == {
        "error": "head_fusion must be one of mean, max, min, got 'median'"}
    assert post(client, "/api/attention?full=2", digit_png).json() == {"error": "full must be 0 or 1, got '2'"}


def test_full_attention_is_size_limited(served, digit_png):
    with TestClient(create_app(served, max_full_values=1000)) as c:
        r = post(c, "/api/attention?full=1", digit_png)
        assert r.status_code == 400 and r.json() == {"error": "full attention would be 2x4x17x17 values, more than the "
                                                              "limit of 1000; ask without full=1"}
        assert post(c, "/api/attention", digit_png).status_code == 200


def test_samples(client):
    val = build_data("digits", 8).val
    r = client.get("/api/sample?model=digits_tiny&source=val&index=3")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-vitlab-label"] == val.classes[int(val.labels[3])]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), val.images[3].permute(1, 2, 0).numpy())
    r = client.get("/api/sample?source=shapes&index=5")
    assert Image.open(io.BytesIO(r.content)).size == (8, 8) and r.headers["x-vitlab-label"] in SHAPE_CLASSES
    r = client.get("/api/sample?source=scenes&index=2")
    assert Image.open(io.BytesIO(r.content)).size == (8, 8) and r.headers["x-vitlab-label"].startswith("a ")
    assert client.get("/api/sample?source=video").json() == {"error": "source must be val, shapes or scenes, got "
                                                                      "'video'"}
    assert client.get("/api/sample?source=val&index=-1").status_code == 400


def test_the_page_is_served_with_everything_it_needs(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assets = [client.get(f"/{name}") for name in ("app.js", "style.css")]
    assert all(a.status_code == 200 for a in assets)
    for text in [page.text] + [a.text for a in assets]:                     # no CDN: nothing from elsewhere
        assert "http://" not in text and "https://" not in text
    for element in ("model", "file", "shapes", "scenes", "val", "overlay", "layer", "head", "fusion", "discard",
                    "rollout", "class", "logits", "posembed", "distance", "multiples", "prediction"):
        assert f'id="{element}"' in page.text
