"""Fixtures of the serve tests: a tiny checkpoint trained here in about a second, and a real uvicorn server in a
thread on a free loopback port."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import pytest
import torch

import vitlab
from vitlab.checkpoint import save_model
from vitlab.data import build_data


def train_tiny(directory, steps: int = 80, seed: int = 0, depth: int = 2):
    """vit_micro_patch2_8 (`depth` layers) on digits, Adam for `steps` batches of 64 -> a run-like checkpoint
    directory (config.json with classes, data=digits, image_size=8 + model.safetensors).
    Returns (directory, val top-1 in [0, 1])."""
    torch.manual_seed(seed)
    data = build_data("digits", 8)
    model = vitlab.create_model("vit_micro_patch2_8", num_classes=10, depth=depth)
    mean = torch.tensor(model.cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.cfg.std).view(1, 3, 1, 1)
    x = (data.train.images.float() / 255 - mean) / std                    # (1347, 3, 8, 8)
    y = data.train.labels
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(y), (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        xv = (data.val.images.float() / 255 - mean) / std
        top1 = (model(xv).argmax(-1) == data.val.labels).float().mean().item()
    save_model(model, directory, classes=data.classes, data="digits", image_size=8)
    return directory, top1


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A trained tiny run directory (digits, 8 px, 4x4 patches, 2 layers, 4 heads)."""
    directory, top1 = train_tiny(tmp_path_factory.mktemp("serve_run") / "digits_tiny")
    assert top1 > 0.3, f"the tiny serve checkpoint did not train (val top-1 {top1:.2f})"
    return directory


def make_tiny_detr(directory, seed: int = 0):
    """A randomly initialised detr_micro_64 (10 queries, 1 encoder and 2 decoder layers, 6 classes, 64 px, 8x8
    feature grid, 4 heads) saved with save_model. Fresh DETR weights give every query nearly the same box and flat
    cross-attention, so the query embedding, the last cross-attention's projections and the heads are scaled up:
    the queries then differ (distinct boxes, scores on both sides of 0.5, distinct maps), as a trained one's do."""
    torch.manual_seed(seed)
    model = vitlab.create_model("detr_micro_64", num_queries=10, enc_layers=1, dec_layers=2).eval()
    with torch.no_grad():
        model.query_embed.weight.normal_(0, 3)
        for p in model.decoder.layers[-1].cross_attn.parameters():
            if p.dim() > 1:
                p.mul_(3)
        model.head.weight.mul_(2)
        model.box_head.layers[-1].weight.mul_(6)
    classes = ["circle", "square", "triangle", "star", "cross", "ring"]
    save_model(model, directory, classes=classes, image_size=64)
    return directory


@pytest.fixture(scope="session")
def tiny_detr(tmp_path_factory):
    """A tiny DETR checkpoint directory (see make_tiny_detr)."""
    return make_tiny_detr(tmp_path_factory.mktemp("serve_detr") / "detr_tiny")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(app):
    """uvicorn serving `app` on 127.0.0.1 in a thread. Yields the base URL; stops the server on exit."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def start_server():
    """live_server as a fixture (test modules cannot import conftest under --import-mode=importlib)."""
    return live_server


CAPTIONER_ARGS = {"encoder_dim": 32, "encoder_depth": 1, "dim": 32, "depth": 1, "ffn_dim": 64, "num_heads": 2,
                  "encoder_heads": 2, "max_len": 12}


def make_tiny_captioner(directory, steps: int = 16, seed: int = 0):
    """caption_vit_micro_patch8_64 shrunk to one encoder and one decoder layer (32 wide, 2 heads, 8x8 image tokens),
    trained with the task's objective for `steps` batches of 32 on 64 generated scenes (a second or two), saved the
    way run_training saves a run: config.json with the tokenizer under "task_extras", data=scenes, image_size=64."""
    from vitlab.data.captions import build_caption_data, caption_batches
    from vitlab.tasks.captioning import CaptionAugment, CaptionObjective

    torch.manual_seed(seed)
    data = build_caption_data("scenes", 64, n_train=64, n_val=8, max_length=12)
    tok = data.tokenizer
    model = vitlab.create_model("caption_vit_micro_patch8_64", num_classes=len(tok.tokens()), **CAPTIONER_ARGS)
    model.tokenizer = tok
    augment, objective = CaptionAugment(model.cfg.mean, model.cfg.std), CaptionObjective(tok.pad_id)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    done, epoch = 0, 0
    while done < steps:
        epoch += 1
        for images, targets in caption_batches(data.train, tok, 32, shuffle=True, epoch=epoch):
            x, _ = augment(images, None)
            loss, _ = objective(model, x, targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    model.eval()
    save_model(model, directory, classes=data.classes, image_size=64, data="scenes",
               task_extras={"tokenizer": tok.to_dict()})
    return directory


@pytest.fixture(scope="session")
def tiny_captioner(tmp_path_factory):
    """A tiny trained captioning run directory (see make_tiny_captioner)."""
    return make_tiny_captioner(tmp_path_factory.mktemp("serve_cap") / "cap_tiny")


@pytest.fixture
def overlay_png():
    """page -> a screenshot of the page's overlay canvas as (H, W, 3) ints (what the user sees: image + overlay)."""
    import io

    import numpy as np
    from PIL import Image

    def shot(page) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(page.locator("#overlay").screenshot())).convert("RGB"),
                          dtype=np.int16)

    return shot
