"""vitlab serve's JSON API through Starlette's test client (first cut: the main endpoints and errors)."""
import io
import struct
import zlib

import pytest
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("multipart")
from starlette.testclient import TestClient  # noqa: E402

import vitlab  # noqa: E402
from vitlab.checkpoint import save_model  # noqa: E402
from vitlab.serve.app import create_app  # noqa: E402
from vitlab.serve.models import load_served_models  # noqa: E402


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve") / "tiny"
    save_model(vitlab.create_model("vit_micro_patch2_8", num_classes=10), d, classes=[str(i) for i in range(10)])
    with TestClient(create_app(load_served_models([str(d)]))) as c:
        yield c


def png(size=(20, 20)):
    b = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(b, "PNG")
    return b.getvalue()


def bomb_png(side=30000):
    """A valid 1-bit side x side PNG of zeros (~100 kB compressed)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    comp, row = zlib.compressobj(9), b"\0" * (1 + side // 8)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_endpoints(client):
    assert client.get("/api/health").json()["status"] == "ok"
    assert client.get("/api/models").json()["models"][0]["grid"] == [4, 4]
    top = client.post("/api/predict", files={"image": ("a.png", png())}, data={"model": "tiny"}).json()["top_k"]
    assert len(top) == 5 and abs(sum(p["probability"] for p in top)) <= 1.0
    r = client.post("/api/attention?full=1", files={"image": ("a.png", png())}, data={"model": "tiny"}).json()
    assert r["attention"]["shape"] == [r["layers"], r["heads"], 17, 17] and r["grid"] == [4, 4]


def test_errors(client):
    assert client.post("/api/predict", files={"image": ("a.png", png())},
                       data={"model": "../../etc/passwd"}).status_code == 404
    r = client.post("/api/predict", files={"image": ("a.txt", b"not an image")}, data={"model": "tiny"})
    assert r.status_code == 400 and set(r.json()) == {"error"} and "Traceback" not in r.text
    assert client.post("/api/predict", content=b"x" * (11 * 2**20),
                       headers={"content-type": "multipart/form-data; boundary=x"}).status_code == 413
    r = client.post("/api/predict", files={"image": ("b.png", bomb_png())}, data={"model": "tiny"})
    assert r.status_code == 400 and "decompression-bomb" in r.json()["error"]
    assert client.post("/api/predict", json={"x": 1}).status_code == 415
