import io

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.data import decode_image, load_image, to_rgb
from vitlab.errors import VitlabError

from .helpers import write_image


def saved(img: Image.Image, path, fmt: str = "PNG", **kw):
    img.save(path, format=fmt, **kw)
    return path


def pixel(path_or_img, xy=(0, 0)):
    img = to_rgb(path_or_img) if isinstance(path_or_img, Image.Image) else decode_image(path_or_img)
    assert img.mode == "RGB"
    return img.getpixel(xy)


def test_modes_to_rgb(tmp_path):
    assert pixel(saved(Image.new("L", (4, 4), 77), tmp_path / "l.png")) == (77, 77, 77)
    assert pixel(saved(Image.new("1", (4, 4), 1), tmp_path / "one.png")) == (255, 255, 255)
    assert pixel(saved(Image.new("1", (4, 4), 0), tmp_path / "zero.bmp", "BMP")) == (0, 0, 0)
    assert pixel(saved(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", "JPEG",
                       quality=100)) == pytest.approx((255, 0, 0), abs=3)
    assert pixel(saved(Image.new("CMYK", (4, 4), (0, 0, 0, 255)), tmp_path / "k.tif", "TIFF")) == (0, 0, 0)


def test_alpha_composited_over_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))  # fully transparent
    rgba.putpixel((1, 1), (10, 20, 30, 255))  # opaque
    rgba.putpixel((2, 2), (0, 0, 0, 128))  # half: halfway to white
    path = saved(rgba, tmp_path / "rgba.png")
    assert pixel(path) == (255, 255, 255)
    assert pixel(path, (1, 1)) == (10, 20, 30)
    assert pixel(path, (2, 2)) == pytest.approx((127, 127, 127), abs=1)
    la = Image.new("LA", (4, 4), (50, 0))
    la.putpixel((1, 1), (50, 255))
    path = saved(la, tmp_path / "la.png")
    assert pixel(path) == (255, 255, 255) and pixel(path, (1, 1)) == (50, 50, 50)


def test_palette_with_and_without_transparency(tmp_path):
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 200, 100, 50, 9, 9, 9] + [0] * (256 * 3 - 9))
    p.putpixel((1, 1), 2)
    assert pixel(saved(p, tmp_path / "p.png")) == (200, 100, 50)
    assert pixel(saved(p, tmp_path / "p.gif", "GIF")) == (200, 100, 50)
    path = saved(p, tmp_path / "pt.png", transparency=1)  # palette index 1 transparent
    assert pixel(path) == (255, 255, 255) and pixel(path, (1, 1)) == (9, 9, 9)


def test_sixteen_bit_scaled_not_clipped(tmp_path):
    a = np.array([[65535, 0], [257, 32896]], dtype=np.uint16)
    path = saved(Image.fromarray(a), tmp_path / "i16.png")
    assert Image.open(path).mode.startswith("I")
    assert [pixel(path, xy)[0] for xy in ((0, 0), (1, 0), (0, 1), (1, 1))] == [255, 0, 1, 128]
    big_endian = Image.frombytes("I;16B", (2, 2), a.astype(">u2").tobytes())
    assert [pixel(big_endian, xy)[0] for xy in ((0, 0), (1, 0), (0, 1), (1, 1))] == [255, 0, 1, 128]
    i32 = Image.fromarray(a.astype(np.int32))  # mode I holding 16-bit data
    assert i32.mode == "I" and pixel(i32)[0] == 255 and pixel(i32, (0, 1))[0] == 1


def test_float_mode(tmp_path):
    unit = Image.fromarray(np.array([[0.0, 1.0], [0.5, np.nan]], dtype=np.float32))
    assert unit.mode == "F"
    assert [pixel(unit, xy)[0] for xy in ((0, 0), (1, 0), (0, 1), (1, 1))] == [0, 255, 128, 0]
    wide = Image.fromarray(np.array([[-100.0, 900.0]], dtype=np.float32))
    assert [pixel(wide, xy)[0] for xy in ((0, 0), (1, 0))] == [0, 255]  # min-max


def test_decode_accepts_bytes_and_webp(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (3, 3), (1, 2, 3)).save(buf, format="PNG")
    assert decode_image(buf.getvalue()).getpixel((0, 0)) == (1, 2, 3)
    path = write_image(tmp_path / "x.WEBP", fmt="WEBP")
    assert decode_image(path).size == (12, 10)


@pytest.mark.parametrize("kind", ["zero", "garbage", "truncated_jpeg", "truncated_png"])
def test_bad_files_raise_one_line_naming_the_file(tmp_path, kind):
    path = tmp_path / f"bad_{kind}.jpg"
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(b"this is not an image\n" * 10)
    else:
        fmt = "JPEG" if kind == "truncated_jpeg" else "PNG"
        noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noise).save(buf, format=fmt)
        data = buf.getvalue()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VitlabError, match="cannot decode") as info:
        decode_image(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    with pytest.raises(VitlabError):
        load_image(path, 8)


def test_load_image_resizes_shorter_side_and_centre_crops(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high: left half black, right half white
    a[:, 20:] = 255
    a[:, :10] = 100  # left quarter grey: cropped away by the centre crop
    path = saved(Image.fromarray(a), tmp_path / "wide.png")
    out = load_image(path, 10)  # shorter side 20 -> 10, width 40 -> 20, crop columns 5..15
    assert out.shape == (3, 10, 10) and out.dtype == torch.uint8
    assert int(out[:, :, 0].max()) < 100  # no grey: the left quarter is outside the crop
    assert int(out[0, 5, 1]) == 0 and int(out[0, 5, -1]) == 255
    tiny = load_image(write_image(tmp_path / "t.png", size=(3, 5)), 16)  # upscaling works too
    assert tiny.shape == (3, 16, 16)
