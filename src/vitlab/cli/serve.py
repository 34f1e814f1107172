"""`vitlab serve [--checkpoint RUN_DIR_OR_FILE ...] [--host 127.0.0.1] [--port 8000]`: the attention explorer in
the browser (vitlab.serve), on uvicorn. Loopback by default; any other host must be asked for and is warned about."""
from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from pathlib import Path

from ..checks import int_arg, text_arg

INSTALL = "pip install 'vitlab[serve]' (starlette, uvicorn, python-multipart)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="attention explorer in the browser for classification, detection and "
                       "captioning checkpoints")
    p.add_argument("--checkpoint", action="extend", nargs="+", type=text_arg, default=None,
                   metavar="RUN_DIR_OR_FILE", help="checkpoints to serve (default runs/demo); only these are reachable")
    p.add_argument("--host", default="127.0.0.1", type=text_arg, help="address to listen on (default loopback)")
    p.add_argument("--port", default=8000, type=int_arg(at_least=0, at_most=65535), help="0: any free port")
    p.add_argument("--max-upload-mb", default=10, type=int_arg(at_least=1, at_most=1024),
                   help="largest request body in MB (413 past it)")
    p.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    from ..errors import VitlabError

    from importlib.util import find_spec

    try:
        import starlette  # noqa: F401
        import uvicorn
        # python-multipart: `python_multipart` since 0.0.13 (importing the old name `multipart` warns), before only that
        if find_spec("python_multipart") is None and find_spec("multipart") is None:
            raise ImportError(name="python-multipart")
    except ImportError as e:
        raise VitlabError(f"vitlab serve needs the serve extra ({e.name} is missing): {INSTALL}") from None
    from ..serve.app import create_app
    from ..serve.models import load_served_models

    paths = args.checkpoint or (["runs/demo"] if Path("runs/demo").exists() else [])
    served = load_served_models(paths)
    app = create_app(served, max_upload_bytes=args.max_upload_mb * 2**20)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        raise VitlabError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    if not is_loopback(args.host):
        print(f"vitlab serve: warning: listening on {args.host}, not loopback: anyone who can reach this machine "
              "can use the served models (there is no authentication)", file=sys.stderr, flush=True)
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    print(f"vitlab serve: http://{shown}:{port}/ ({', '.join(served)}); Ctrl-C stops", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
    return 0
