"""`vitlab serve` on the command line: loopback by default, the address printed, any other host warned about. The
server loop is replaced, so these tests bind a socket but serve nothing (the browser test runs the real one)."""
import socket

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

from vitlab.cli import main  # noqa: E402

WARNING = ("vitlab serve: warning: listening on {host}, not loopback: anyone who can reach this machine can use the "
           "served models (there is no authentication)\n")


@pytest.fixture
def served_sockets(monkeypatch):
    """The sockets `vitlab serve` hands to uvicorn, with the app's upload limit; nothing is served."""
    monkeypatch.setenv("VITLAB_CPU_POLICY", "off")
    calls = []

    def fake_run(server, sockets=None):
        calls.append((server.config.app, [(s.family, s.getsockname()) for s in sockets]))
        for s in sockets:
            s.close()
    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    return calls


def test_loopback_by_default_and_the_address_printed(tiny_run, served_sockets, capsys):
    assert main(["serve", "--checkpoint", str(tiny_run), "--port", "0"]) == 0
    out, err = capsys.readouterr()
    ((app, [(family, (host, port))]),) = served_sockets
    assert family == socket.AF_INET and host == "127.0.0.1" and port > 0
    assert out == f"vitlab serve: http://127.0.0.1:{port}/ (digits_tiny); Ctrl-C stops\n"
    assert "warning" not in err
    assert app.app.limit == 10 * 2**20                       # SecurityHeaders(UploadLimit(...)): the default 10 MB


def test_any_other_host_is_warned_about(tiny_run, served_sockets, capsys):
    assert main(["serve", "--checkpoint", str(tiny_run), "--host", "0.0.0.0", "--port", "0",
                 "--max-upload-mb", "2"]) == 0
    out, err = capsys.readouterr()
    ((app, [(_, (host, port))]),) = served_sockets
    assert host == "0.0.0.0" and err == WARNING.format(host="0.0.0.0")
    assert out == f"vitlab serve: http://0.0.0.0:{port}/ (digits_tiny); Ctrl-C stops\n"
    assert app.app.limit == 2 * 2**20


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_ipv6_loopback_is_bracketed_and_not_warned(tiny_run, served_sockets, capsys):
    try:
        rc = main(["serve", "--checkpoint", str(tiny_run), "--host", "::1", "--port", "0"])
    except OSError:
        pytest.skip("no IPv6 loopback here")
    out, err = capsys.readouterr()
    if rc == 2 and "cannot listen" in err:
        pytest.skip("no IPv6 loopback here")
    ((_, [(family, addr)]),) = served_sockets
    assert family == socket.AF_INET6 and out == f"vitlab serve: http://[::1]:{addr[1]}/ (digits_tiny); Ctrl-C stops\n"
    assert "warning" not in err


def test_bad_checkpoints_and_busy_ports_are_one_line_errors(tiny_run, served_sockets, capsys, tmp_path):
    assert main(["serve", "--checkpoint", str(tmp_path / "nope"), "--port", "0"]) == 2
    assert capsys.readouterr().err == f"vitlab serve: error: {tmp_path / 'nope'}: no such checkpoint, run directory " \
                                      "or model name\n"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--checkpoint", str(tiny_run), "--port", str(port)]) == 2
    assert capsys.readouterr().err.startswith(f"vitlab serve: error: cannot listen on 127.0.0.1:{port}: ")
    assert served_sockets == []
