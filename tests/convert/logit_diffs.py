"""Print the max |logit difference| between vitlab and each reference, per format and config (fp32, CPU).

    .venv/bin/python tests/convert/logit_diffs.py

Uses the same random-weight reference models and fixtures as the tests in this folder. timm rows appear only where
timm imports.
"""
from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import test_hf  # test modules double as fixture libraries here
import test_npz
from conftest import randomize_

from vitlab import create_model
from vitlab.checkpoint import load_model
from vitlab.convert.export_hf import save_hf


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def hf_rows(tmp: Path) -> list[tuple[str, float]]:
    import transformers

    rows = []
    for cid, cls, overrides, size in test_hf.CONFIGS:
        kw = dict(overrides)
        dims = {"dim": kw.pop("dim", 192), "heads": kw.pop("heads", 3)}
        family = "DeiT" if cls.startswith("DeiT") else "ViT"
        cfg = getattr(transformers, f"{family}Config")(hidden_size=dims["dim"], num_hidden_layers=2,
                                                       num_attention_heads=dims["heads"],
                                                       intermediate_size=4 * dims["dim"], **kw)
        torch.manual_seed(0)
        ref = randomize_(getattr(transformers, cls)(cfg))
        ref.save_pretrained(tmp / cid)
        x = torch.randn(2, 3, *size)
        expected = test_hf.logits(ref, x)
        ours = load_model(tmp / cid)
        rows.append((f"hf -> vitlab   {cid}", diff(test_hf.logits(ours, x), expected)))
        save_hf(ours, tmp / f"{cid}_back")
        back = getattr(transformers, cls).from_pretrained(tmp / f"{cid}_back").eval()
        rows.append((f"vitlab -> hf   {cid}", diff(test_hf.logits(back, x), expected)))
        if cid == "vit_ti16_224":          # control: the comparison does see a k/v mix-up in one block
            with torch.no_grad():
                w = ours.blocks[0].attn.qkv.weight
                d = w.shape[1]
                w[d:2 * d], w[2 * d:] = w[2 * d:].clone(), w[d:2 * d].clone()
            rows.append((f"control: k/v swapped in block 0  {cid}", diff(test_hf.logits(ours, x), expected)))
        if cid in ("vit_ti16_224", "deit_distilled_teacher"):
            for new in ((384, 384), (224, 320)) if cid == "vit_ti16_224" else ((96, 96),):
                xn = torch.randn(2, 3, *new)
                got = test_hf.logits(load_model(tmp / cid, img_size=new), xn)
                want = test_hf.logits(ref, xn, interpolate_pos_encoding=True)
                rows.append((f"hf@{new[0]}x{new[1]} interpolate_pos_encoding  {cid}", diff(got, want)))
    return rows


def npz_rows(tmp: Path) -> list[tuple[str, float]]:
    rows = []
    for cid, layout, cls, pre, scanned in test_npz.CASES:
        a = test_npz.google_arrays(layout, "random", cls=cls, pre_logits=pre, scanned=scanned)
        img = np.random.default_rng(1).standard_normal((2, test_npz.IMG, test_npz.IMG, 3)).astype(np.float32)
        expected = torch.from_numpy(test_npz.reference_logits(a, img.astype(np.float64), layout))
        path = tmp / f"{cid}.npz"
        np.savez(path, **a)
        with torch.no_grad():
            got = load_model(path)(torch.from_numpy(img).permute(0, 3, 1, 2))
        rows.append((f"npz vs NumPy reference  {cid}", diff(got, expected)))
    return rows


def timm_rows(tmp: Path) -> list[tuple[str, float]]:
    try:
        import timm
    except Exception as e:  # noqa: BLE001  (timm fails in several ways without torchvision)
        return [(f"timm: not run ({type(e).__name__}: {str(e).splitlines()[0][:60]})", float("nan"))]
    rows = []
    for name, size in [("vit_tiny_patch16_224", 224), ("vit_small_patch32_384", 384),
                       ("deit_tiny_distilled_patch16_224", 224)]:
        torch.manual_seed(0)
        ref = randomize_(timm.create_model(name, pretrained=False, depth=2, num_classes=10))
        torch.save(ref.state_dict(), tmp / f"{name}.pth")
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            rows.append((f"timm  {name}", diff(load_model(tmp / f"{name}.pth", name=name)(x), ref(x))))
    return rows


def deit_export_rows(tmp: Path) -> list[tuple[str, float]]:
    import transformers

    torch.manual_seed(0)
    ours = randomize_(create_model("deit_tiny_distilled_patch16_224", depth=2, num_classes=4, img_size=64))
    save_hf(ours, tmp / "deit_export")
    ref = transformers.AutoModelForImageClassification.from_pretrained(tmp / "deit_export").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        return [("vitlab deit (eps 1e-6) -> hf", diff(ref(pixel_values=x).logits, ours(x)))]


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = hf_rows(tmp) + deit_export_rows(tmp) + npz_rows(tmp) + timm_rows(tmp)
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"{label:<{width}}  max|diff| = {value:.3g}")


if __name__ == "__main__":
    main()
