"""Google .npz checkpoints, tested without JAX: fixtures written with the Google key layouts, checked two ways —
element by element (each Flax array lands where the layout says, transposes and head reshapes included) and
against an independent NumPy forward pass written from the Flax conventions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import erf

from vitlab.checkpoint import load_model
from vitlab.cli import main as cli_main
from vitlab.convert import read_checkpoint
from vitlab.convert.npz import vit_to_npz_arrays
from vitlab.errors import VitlabError

DIM, HEADS, HD, DEPTH, PATCH, IMG, MLP, CLASSES, REP = 8, 2, 4, 2, 4, 8, 16, 3, 6
GRID = IMG // PATCH


def google_arrays(layout: str, fill: str = "arange", cls: bool = True, pre_logits: bool = False,
                  scanned: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny ViT in Google's .npz layout. fill='arange': every element distinct and known; 'random': trained-like."""
    rng = np.random.default_rng(seed)
    counter = [0]

    def arr(*shape: int, scale: float = 1.0, center: float = 0.0) -> np.ndarray:
        n = int(np.prod(shape))
        if fill == "arange":
            counter[0] += 1000
            return (np.arange(n, dtype=np.float32) + counter[0]).reshape(shape)
        return (center + scale * rng.standard_normal(n)).astype(np.float32).reshape(shape)

    bv = layout == "big_vision"
    mha, ln2, mlp = ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0") if bv else \
        ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
    a = {"embedding/kernel": arr(PATCH, PATCH, 3, DIM, scale=0.1), "embedding/bias": arr(DIM, scale=0.1)}
    if cls:
        a["cls"] = arr(1, 1, DIM, scale=0.5)
    n_pos = GRID * GRID + (int(cls) if not bv else 0)
    a["pos_embedding" if bv else "Transformer/posembed_input/pos_embedding"] = arr(1, n_pos, DIM, scale=0.5)
    for i in range(DEPTH):
        b = f"Transformer/encoderblock_{i}/"
        a |= {b + "LayerNorm_0/scale": arr(DIM, scale=0.2, center=1), b + "LayerNorm_0/bias": arr(DIM, scale=0.1)}
        for n in ("query", "key", "value"):
            a[b + f"{mha}/{n}/kernel"] = arr(DIM, HEADS, HD, scale=0.35)
            a[b + f"{mha}/{n}/bias"] = arr(HEADS, HD, scale=0.1)
        a[b + f"{mha}/out/kernel"] = arr(HEADS, HD, DIM, scale=0.35)
        a[b + f"{mha}/out/bias"] = arr(DIM, scale=0.1)
        a |= {b + f"{ln2}/scale": arr(DIM, scale=0.2, center=1), b + f"{ln2}/bias": arr(DIM, scale=0.1)}
        a |= {b + f"{mlp}/Dense_0/kernel": arr(DIM, MLP, scale=0.35), b + f"{mlp}/Dense_0/bias": arr(MLP, scale=0.1),
              b + f"{mlp}/Dense_1/kernel": arr(MLP, DIM, scale=0.25), b + f"{mlp}/Dense_1/bias": arr(DIM, scale=0.1)}
    a |= {"Transformer/encoder_norm/scale": arr(DIM, scale=0.2, center=1),
          "Transformer/encoder_norm/bias": arr(DIM, scale=0.1)}
    if pre_logits:
        a |= {"pre_logits/kernel": arr(DIM, REP, scale=0.35), "pre_logits/bias": arr(REP, scale=0.1)}
    a |= {"head/kernel": arr(REP if pre_logits else DIM, CLASSES, scale=0.35), "head/bias": arr(CLASSES, scale=0.1)}
    if scanned:                                   # big_vision scan-over-layers: one array per name, layer axis first
        blocks = sorted({k.split("/", 2)[2] for k in a if k.startswith("Transformer/encoderblock_")})
        for name in blocks:
            a[f"Transformer/encoderblock/{name}"] = np.stack(
                [a.pop(f"Transformer/encoderblock_{i}/{name}") for i in range(DEPTH)])
    prefix = "params/" if bv else ""
    return {prefix + k: v for k, v in a.items()}


# --- an independent reference: the Flax model's computation in NumPy (NHWC input, per-head kernels) ---------------
def _ln(x, scale, bias, eps=1e-6):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def reference_logits(a: dict[str, np.ndarray], img_nhwc: np.ndarray, layout: str) -> np.ndarray:
    """Google's ViT forward. GELU is exact (erf), as timm and transformers run these weights; Flax's default
    nn.gelu is the tanh approximation (a ~1e-3 difference, documented)."""
    bv = layout == "big_vision"
    a = {k.removeprefix("params/"): v.astype(np.float64) for k, v in a.items()}
    if "Transformer/encoderblock/LayerNorm_0/scale" in a:
        a |= {f"Transformer/encoderblock_{i}/{k.split('/', 2)[2]}": v[i] for k, v in list(a.items())
              if k.startswith("Transformer/encoderblock/") for i in range(v.shape[0])}
    mha, ln2, mlp = ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0") if bv else \
        ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
    B, H, W, C = img_nhwc.shape
    p = a["embedding/kernel"].shape[0]
    patches = img_nhwc.reshape(B, H // p, p, W // p, p, C).transpose(0, 1, 3, 2, 4, 5).reshape(B, -1, p * p * C)
    x = patches @ a["embedding/kernel"].reshape(p * p * C, -1) + a["embedding/bias"]   # a VALID conv, stride p
    cls = np.tile(a["cls"], (B, 1, 1)) if "cls" in a else None
    if bv:
        x = x + a["pos_embedding"]                          # position first, [CLS] after (big_vision)
        x = np.concatenate([cls, x], 1) if cls is not None else x
    else:
        x = np.concatenate([cls, x], 1) if cls is not None else x
        x = x + a["Transformer/posembed_input/pos_embedding"]
    for i in range(sum(k.endswith("LayerNorm_0/scale") and "encoderblock_" in k for k in a)):
        b = f"Transformer/encoderblock_{i}/"
        y = _ln(x, a[b + "LayerNorm_0/scale"], a[b + "LayerNorm_0/bias"])
        q, k, v = (np.einsum("bnd,dhk->bnhk", y, a[b + f"{mha}/{n}/kernel"]) + a[b + f"{mha}/{n}/bias"]
                   for n in ("query", "key", "value"))
        s = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
        s = np.exp(s - s.max(-1, keepdims=True))
        o = np.einsum("bhqs,bshk->bqhk", s / s.sum(-1, keepdims=True), v)
        x = x + np.einsum("bqhk,hkd->bqd", o, a[b + f"{mha}/out/kernel"]) + a[b + f"{mha}/out/bias"]
        y = _ln(x, a[b + f"{ln2}/scale"], a[b + f"{ln2}/bias"])
        h = y @ a[b + f"{mlp}/Dense_0/kernel"] + a[b + f"{mlp}/Dense_0/bias"]
        h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
        x = x + h @ a[b + f"{mlp}/Dense_1/kernel"] + a[b + f"{mlp}/Dense_1/bias"]
    x = _ln(x, a["Transformer/encoder_norm/scale"], a["Transformer/encoder_norm/bias"])
    x = x[:, 0] if cls is not None else x.mean(1)        # 'token' / 'tok' pooling, else 'gap'
    if "pre_logits/kernel" in a:
        x = np.tanh(x @ a["pre_logits/kernel"] + a["pre_logits/bias"])
    return x @ a["head/kernel"] + a["head/bias"]


def _save(tmp_path, arrays, name="vit.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


# --- placement, element by element -------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["vision_transformer", "big_vision"])
def test_each_array_lands_where_the_layout_says(tmp_path, layout):
    a = google_arrays(layout, "arange", pre_logits=True)
    sd = read_checkpoint(_save(tmp_path, a)).state_dict
    g = {k.removeprefix("params/"): torch.from_numpy(v) for k, v in a.items()}
    bv = layout == "big_vision"
    mha, ln2, mlp = ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0") if bv else \
        ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
    kern = g["embedding/kernel"]                                            # (p, p, in, dim)
    for o, c, y, x in [(0, 0, 0, 0), (5, 2, 1, 3), (DIM - 1, 1, 3, 2)]:
        assert sd["patch_embed.proj.weight"][o, c, y, x] == kern[y, x, c, o]
    assert torch.equal(sd["cls_token"], g["cls"])
    if bv:      # positions were added before [CLS]: [CLS] gets a zero slot, the grid follows in order
        assert torch.equal(sd["pos_embed"][0, 0], torch.zeros(DIM))
        assert torch.equal(sd["pos_embed"][:, 1:], g["pos_embedding"])
    else:
        assert torch.equal(sd["pos_embed"], g["Transformer/posembed_input/pos_embedding"])
    for i in range(DEPTH):
        b = f"Transformer/encoderblock_{i}/"
        assert torch.equal(sd[f"blocks.{i}.norm1.weight"], g[b + "LayerNorm_0/scale"])
        assert torch.equal(sd[f"blocks.{i}.norm2.bias"], g[b + f"{ln2}/bias"])
        qkv_w, qkv_b = sd[f"blocks.{i}.attn.qkv.weight"], sd[f"blocks.{i}.attn.qkv.bias"]
        assert qkv_w.shape == (3 * DIM, DIM)
        for part, name in enumerate(("query", "key", "value")):            # rows: [q | k | v], head-major inside
            kq, bq = g[b + f"{mha}/{name}/kernel"], g[b + f"{mha}/{name}/bias"]   # (dim, heads, hd), (heads, hd)
            for h in range(HEADS):
                for d in range(HD):
                    row = part * DIM + h * HD + d
                    assert torch.equal(qkv_w[row], kq[:, h, d])
                    assert qkv_b[row] == bq[h, d]
        out = g[b + f"{mha}/out/kernel"]                                       # (heads, hd, dim)
        for h, d, o in [(0, 0, 0), (1, 2, 5), (HEADS - 1, HD - 1, DIM - 1)]:
            assert sd[f"blocks.{i}.attn.proj.weight"][o, h * HD + d] == out[h, d, o]
        assert torch.equal(sd[f"blocks.{i}.mlp.fc1.weight"], g[b + f"{mlp}/Dense_0/kernel"].T)
        assert torch.equal(sd[f"blocks.{i}.mlp.fc2.weight"], g[b + f"{mlp}/Dense_1/kernel"].T)
        assert torch.equal(sd[f"blocks.{i}.mlp.fc2.bias"], g[b + f"{mlp}/Dense_1/bias"])
    assert torch.equal(sd["norm.weight"], g["Transformer/encoder_norm/scale"])
    assert torch.equal(sd["pre_logits.fc.weight"], g["pre_logits/kernel"].T)
    assert torch.equal(sd["head.weight"], g["head/kernel"].T)
    assert torch.equal(sd["head.bias"], g["head/bias"])


def test_checkpoint_settings_follow_the_npz(tmp_path):
    ckpt = read_checkpoint(_save(tmp_path, google_arrays("vision_transformer", pre_logits=True)))
    args = ckpt.model_args
    assert (args["dim"], args["num_heads"], args["depth"], args["patch_size"], args["img_size"]) == \
        (DIM, HEADS, DEPTH, PATCH, IMG)
    assert (args["norm_eps"], args["representation_size"], args["num_classes"], args["pool"]) == \
        (1e-6, REP, CLASSES, "cls")
    assert (ckpt.interpolation, ckpt.antialias) == ("bilinear", False)     # Google's zoom(order=1) is linear


# --- logits against the NumPy reference --------------------------------------------------------------------------
CASES = [  # (id, layout, cls token, pre-logits, scanned)
    ("vit_token_prelogits", "vision_transformer", True, True, False),
    ("vit_gap", "vision_transformer", False, False, False),
    ("bigvision_tok", "big_vision", True, False, False),
    ("bigvision_gap_scanned", "big_vision", False, False, True),
]


@pytest.mark.parametrize("cid,layout,cls,pre,scanned", CASES, ids=[c[0] for c in CASES])
def test_logits_equal_numpy_reference(tmp_path, cid, layout, cls, pre, scanned):
    a = google_arrays(layout, "random", cls=cls, pre_logits=pre, scanned=scanned)
    img = np.random.default_rng(1).standard_normal((2, IMG, IMG, 3)).astype(np.float32)
    expected = torch.from_numpy(reference_logits(a, img.astype(np.float64), layout)).float()
    model = load_model(_save(tmp_path, a))
    assert model.cfg.class_token == cls and model.cfg.pool == ("cls" if cls else "avg")
    with torch.no_grad():
        got = model(torch.from_numpy(img).permute(0, 3, 1, 2))
    assert expected.abs().max() > 0.1                                   # a real signal, not all zeros
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("layout", ["vision_transformer", "big_vision"])
def test_write_npz_round_trip(tmp_path, layout):
    a = google_arrays("vision_transformer", "random", pre_logits=True)
    model = load_model(_save(tmp_path, a))
    arrays = vit_to_npz_arrays(model, layout)
    again = load_model(_save(tmp_path, arrays, "again.npz"))
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), atol=1e-5, rtol=0)
    if layout == "vision_transformer":
        assert arrays.keys() == a.keys() and all(np.array_equal(arrays[k], a[k]) for k in a)


def test_cli_converts_an_npz(tmp_path, capsys):
    a = google_arrays("vision_transformer", "random")
    src = _save(tmp_path, a)
    assert cli_main(["convert", str(src), str(tmp_path / "out")]) == 0
    assert "vit_" in capsys.readouterr().out
    img = np.random.default_rng(2).standard_normal((1, IMG, IMG, 3)).astype(np.float32)
    model = load_model(tmp_path / "out")
    with torch.no_grad():
        got = model(torch.from_numpy(img).permute(0, 3, 1, 2))
    expected = torch.from_numpy(reference_logits(a, img.astype(np.float64), "vision_transformer")).float()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_unknown_arrays_are_refused(tmp_path):
    a = google_arrays("big_vision", "random", cls=False)
    a["params/MAPHead_0/probe"] = np.zeros((1, 1, DIM), np.float32)
    with pytest.raises(VitlabError, match="big_vision arrays this ViT converter does not support: MAPHead_0/probe"):
        read_checkpoint(_save(tmp_path, a))


def test_new_size_resamples_like_google(tmp_path):
    """Google's fine-tuning at a higher resolution zooms the position grid with scipy.ndimage.zoom(order=1)."""
    from scipy.ndimage import zoom

    a = google_arrays("vision_transformer", "random")
    model = load_model(_save(tmp_path, a), img_size=16)                     # grid 2x2 -> 4x4
    table = a["Transformer/posembed_input/pos_embedding"][0]               # (1 + 4, dim)
    grid = table[1:].reshape(GRID, GRID, DIM).astype(np.float64)
    expected = zoom(grid, (4 / GRID, 4 / GRID, 1), order=1).reshape(16, DIM)
    got = model.pos_embed.detach()[0]
    assert got.shape == (1 + 16, DIM)
    np.testing.assert_allclose(got[1:].numpy(), expected, atol=1e-6)
    assert torch.equal(got[0], torch.from_numpy(table[0]))                 # [CLS]'s slot is not resampled
    with torch.no_grad():
        assert model(torch.randn(1, 3, 16, 16)).shape == (1, CLASSES)
