"""vitlab serve as a server: upload limits, decompression bombs, non-images, unlisted models, no traceback in any
answer, nothing unpickled, a malformed-request storm, and the model's worker thread pool."""
import io
import os
import pickle
import socket
import struct
import threading
import time
import zlib

import pytest
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("python_multipart")
httpx = pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

import vitlab.data.decode  # noqa: E402
import vitlab.serve.app  # noqa: E402
from vitlab.errors import VitlabError  # noqa: E402
from vitlab.serve.app import create_app  # noqa: E402
from vitlab.serve.models import load_served_models, upload_name  # noqa: E402


@pytest.fixture(scope="module")
def served(tiny_run):
    return load_served_models([str(tiny_run)])


@pytest.fixture(scope="module")
def client(served):
    with TestClient(create_app(served, max_upload_bytes=4096), raise_server_exceptions=False) as c:
        yield c


def png(size=(8, 8)):
    b = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(b, "PNG")
    return b.getvalue()


def header_only_png(width, height):
    """A PNG whose IHDR claims width x height (8-bit RGB) with one tiny IDAT: a few dozen bytes, any size claimed."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))


def post(client, data, filename="a.png", model="digits_tiny"):
    return client.post("/api/predict", files={"image": (filename, data)}, data={"model": model})


def assert_error(r, status, message=None):
    """One JSON error line, the promised status, and nothing of Python's insides."""
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and "\n" not in r.json()["error"]
    for leak in ("Traceback", 'File "', "object at 0x", "site-packages"):
        assert leak not in r.text
    if message is not None:
        assert r.json()["error"] == message


@pytest.fixture
def no_decoding(monkeypatch):
    """Fails the test if the robust decoder (which decodes pixels) is reached."""
    def refuse(*args, **kwargs):
        raise AssertionError("the image was decoded")
    monkeypatch.setattr(vitlab.data.decode, "load_image", refuse)


def test_upload_limit(client):
    assert_error(client.post("/api/predict", content=b"x" * 5000,
                             headers={"content-type": "multipart/form-data; boundary=x"}),
                 413, "the upload is larger than the limit of 4096 bytes")

    def stream():                                      # chunked: no Content-Length, the limit counts streamed bytes
        for _ in range(10):
            yield b"y" * 1000
    assert_error(client.post("/api/predict", content=stream(),
                             headers={"content-type": "multipart/form-data; boundary=x"}), 413)
    assert post(client, png()).status_code == 200      # under the limit


def test_default_upload_limit_is_10_mb(served):
    with TestClient(create_app(served)) as c:
        ok = c.post("/api/predict", files={"image": ("a.png", png())}, data={"model": "digits_tiny", "pad": "p" * 1000})
        assert ok.status_code == 200
        assert_error(c.post("/api/predict", content=b"x" * (10 * 2**20 + 1),
                            headers={"content-type": "multipart/form-data; boundary=x"}),
                     413, f"the upload is larger than the limit of {10 * 2**20} bytes")


def test_decompression_bombs_are_refused_without_decoding(client, no_decoding):
    bomb = header_only_png(30000, 30000)
    assert len(bomb) < 100
    assert_error(post(client, bomb, "bomb.png"), 400, "the upload 'bomb.png' refused (decompression-bomb guard): "
                 f"more than {2 * Image.MAX_IMAGE_PIXELS} pixels; it was not decoded")
    # between PIL's warning (1x its limit) and its error (2x): PIL alone would decode this one; we do not
    with pytest.warns(Image.DecompressionBombWarning):
        r = post(client, header_only_png(10000, 10000), "big.png")
    assert_error(r, 400, "the upload 'big.png' refused (decompression-bomb guard): 10000x10000 is 100000000 pixels, "
                 f"more than the limit of {Image.MAX_IMAGE_PIXELS}; it was not decoded")


def test_non_images(client):
    assert_error(post(client, b"just some text", "notes.txt"), 400, "the upload 'notes.txt' is not an image PIL can "
                 "read (no valid PNG, JPEG, GIF, BMP, TIFF or WebP header)")
    assert_error(post(client, b"", "empty.png"), 400, "the upload 'empty.png' is empty")
    truncated = png((64, 64))
    r = post(client, truncated[: len(truncated) // 2], "half.png")
    assert_error(r, 400)
    assert r.json()["error"].startswith("the upload 'half.png' is a broken image: ")
    r = client.post("/api/attention", files={"image": ("../../x\n.jpg", b"\xff\xd8\xff garbage")},
                    data={"model": "digits_tiny"})
    assert_error(r, 400)
    assert r.json()["error"].startswith("the upload 'x%0A.jpg' ")   # the base name (httpx escaped the newline)
    assert upload_name("../../etc/a\nb.png") == "the upload 'a?b.png'" and upload_name(None) == "the upload"
    assert upload_name("C:\\x\\" + "y" * 100) == f"the upload {'y' * 60!r}"
    assert_error(client.post("/api/predict", data={"model": "digits_tiny"},
                             files={"other": ("a.png", png())}), 400, "the form has no file field 'image'")


def test_only_listed_models_are_reachable(client):
    for name in ("../../etc/passwd", "/etc/passwd", str(os.getcwd()), "digits_tiny/../x", "other"):
        r = post(client, png(), model=name)
        assert_error(r, 404, f"unknown model {name[:80]!r}; loaded: digits_tiny")
        assert "root:" not in r.text
        assert_error(client.get("/api/sample", params={"model": name, "source": "shapes"}), 404)
    assert_error(client.get("/../../etc/passwd"), 404)
    assert_error(client.get("/%2e%2e/%2e%2e/etc/passwd"), 404)


def test_two_models_need_a_name(tiny_run):
    served = load_served_models([str(tiny_run), str(tiny_run)])
    assert list(served) == ["digits_tiny", "digits_tiny-2"]
    with TestClient(create_app(served)) as c:
        assert_error(c.post("/api/predict", files={"image": ("a.png", png())}), 400,
                     "say which model: the form field 'model' is one of digits_tiny, digits_tiny-2")
        assert post(c, png(), model="digits_tiny-2").status_code == 200


def test_an_internal_error_shows_no_traceback(client, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret detail from inside")
    monkeypatch.setattr(vitlab.serve.app, "predict_top_k", broken)
    r = post(client, png())
    assert_error(r, 500, "internal error (the server log has the details)")
    assert "secret" not in r.text


def test_nothing_is_unpickled(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"state_dict": Payload()}, protocol=2))
    with pytest.raises(VitlabError, match="unpickling can run code"):
        load_served_models([str(path)])
    assert not marker.exists()


def storm_requests():
    """Malformed requests: wrong content types, empty bodies, truncated or broken multipart, bad numbers."""
    mp = "multipart/form-data; boundary=XyZ"
    part = (b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\ndigits_tiny\r\n'
            b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + png())
    yield "POST", "/api/predict", {}, b""
    yield "POST", "/api/predict", {"content-type": mp}, b""
    yield "POST", "/api/predict", {"content-type": "multipart/form-data"}, b"--x\r\n"
    yield "POST", "/api/predict", {"content-type": mp}, part                       # no closing boundary
    yield "POST", "/api/predict", {"content-type": mp}, part[:60]                  # cut inside the headers
    yield "POST", "/api/predict", {"content-type": mp}, b"--XyZ\r\n\r\n\r\n--XyZ--"
    yield "POST", "/api/attention", {"content-type": mp}, b"\x00\xff" * 300
    yield "POST", "/api/attention", {"content-type": "application/json"}, b'{"image": 1}'
    yield "POST", "/api/attention", {"content-type": "text/plain"}, b"hello"
    yield "POST", "/api/attention", {"content-type": "image/png"}, png()
    yield "POST", "/api/predict", {"content-type": "application/x-www-form-urlencoded"}, b"model=digits_tiny&image=x"
    yield "POST", "/api/predict", {"content-type": mp + "; charset=\x7f"}, b"--XyZ--"
    yield "POST", "/api/predict", {"content-type": "multipart/form-data; boundary=" + "b" * 5000}, b"x"
    yield "GET", "/api/predict", {}, b""
    yield "POST", "/api/health", {}, b""
    yield "GET", "/api/sample?index=abc", {}, b""
    yield "GET", "/api/sample?index=99999999999999999999", {}, b""
    yield "GET", "/api/models?x=%ff%fe", {}, b""


def test_malformed_request_storm_through_the_test_client(client):
    for method, url, headers, body in storm_requests():
        r = client.request(method, url, headers=headers, content=body)
        if url.startswith("/api/models"):               # odd bytes in an unused query string are harmless
            assert r.status_code == 200
        else:
            assert 400 <= r.status_code < 500, (url, headers, r.text)
            assert_error(r, r.status_code)
    assert client.get("/api/health").status_code == 200
    assert post(client, png()).status_code == 200


def raw(port, data, read=True):
    """Send raw bytes on a fresh connection; return what came back (b'' if the server closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        if not read:
            return b""
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_server_stays_up_after_a_storm_on_the_wire(served, start_server):
    with start_server(create_app(served)) as url:
        port = int(url.rsplit(":", 1)[1])
        with httpx.Client(base_url=url, timeout=10) as http:
            for method, path, headers, body in storm_requests():
                assert http.request(method, path, headers=headers, content=body).status_code < 500
        head = (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n"
                b"Content-Length: 100000\r\n\r\n--XyZ\r\nContent-Disposition: form-data; ")
        for _ in range(5):
            raw(port, head, read=False)                   # the client goes away in the middle of the body
        assert raw(port, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400")
        raw(port, b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        raw(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(200))   # a TLS hello
        time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=10) as http:
            assert http.get("/api/health").json()["status"] == "ok"
            assert http.post("/api/predict", files={"image": ("a.png", png())},
                             data={"model": "digits_tiny"}).status_code == 200


def test_model_work_runs_in_the_worker_pool(served, start_server, monkeypatch):
    real, seen = vitlab.serve.app.predict_top_k, []

    def recording(*args, **kwargs):
        seen.append(threading.current_thread().name)
        return real(*args, **kwargs)
    monkeypatch.setattr(vitlab.serve.app, "predict_top_k", recording)
    with start_server(create_app(served)) as url:
        def client_thread(results):
            with httpx.Client(base_url=url, timeout=30) as http:
                for _ in range(3):
                    results.append(http.post("/api/predict", files={"image": ("a.png", png())},
                                             data={"model": "digits_tiny"}).status_code)
        results = []
        threads = [threading.Thread(target=client_thread, args=(results,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        health = httpx.get(url + "/api/health").json()
    assert results == [200] * 18
    assert health["workers"] == len(os.sched_getaffinity(0))
    assert len(seen) == 18 and all(name.startswith("vitlab-model") for name in seen)


def test_busy_server_answers_503(served, monkeypatch):
    release, entered = threading.Event(), threading.Event()
    real = vitlab.serve.app.predict_top_k

    def slow(*args, **kwargs):
        entered.set()
        release.wait(10)
        return real(*args, **kwargs)
    monkeypatch.setattr(vitlab.serve.app, "predict_top_k", slow)
    with TestClient(create_app(served, workers=1, max_pending=1)) as c:
        first = []
        t = threading.Thread(target=lambda: first.append(post(c, png()).status_code))
        t.start()
        assert entered.wait(10)
        assert_error(post(c, png()), 503, "busy: 1 requests are waiting; try again")
        release.set()
        t.join(10)
    assert first == [200]
