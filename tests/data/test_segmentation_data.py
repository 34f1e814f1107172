"""Segmentation data: scenes masks from the instance masks, seeded volumes, folders (PNG, palette, .npy, NIfTI)
with bad pairs skipped and counted, one-line errors, and augmentation that keeps image and mask aligned."""
import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.data.scenes import build_scenes
from vitlab.data.seg_augment import SegmentationAugment
from vitlab.data.segmentation import build_segmentation_data
from vitlab.data.volumes import build_volumes
from vitlab.errors import VitlabError


def test_scenes_masks_follow_the_instance_masks_in_drawing_order():
    bundle = build_segmentation_data("scenes", 32, scenes_train=8, scenes_val=4)
    assert bundle.classes[0] == "background" and len(bundle.classes) == 7
    train, _ = build_scenes(32, n_train=8, n_val=4)
    for i in range(8):
        want = torch.zeros(32, 32, dtype=torch.uint8)
        for obj, mask in zip(train.objects[i], train.instance_masks[i]):   # later objects drawn over earlier
            want[mask] = obj.label + 1
        assert torch.equal(bundle.train.masks[i], want)


def test_volumes_are_seeded_and_hold_every_class():
    a, _ = build_volumes(16, seed=3, n_train=20, n_val=2)
    b, _ = build_volumes(16, seed=3, n_train=20, n_val=2)
    c, _ = build_volumes(16, seed=4, n_train=20, n_val=2)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks) and not torch.equal(a.images, c.images)
    assert a.images.shape == (20, 1, 16, 16, 16) and set(a.masks.unique().tolist()) == {0, 1, 2, 3}
    with pytest.raises(VitlabError, match="scenes holds 2-D images but the model segments 3-D volumes"):
        build_segmentation_data("scenes", 16, spatial_dims=3, scenes_train=2, scenes_val=1)


def _png_folder(root, n=5):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / "images" / f"{i}.jpg")
        mask = np.zeros((20, 24), dtype=np.uint8)
        mask[5:15, 6:18] = 1 + i % 2
        mask[0] = 255                                         # VOC-style ignored border
        pal = Image.fromarray(mask, mode="P")
        pal.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [255] * (253 * 3))
        pal.save(root / "masks" / f"{i}.png")
    (root / "classes.txt").write_text("background\ncat\ndog\n")


def test_png_folder_reads_palette_masks_and_skips_bad_pairs(tmp_path, caplog):
    root = tmp_path / "seg"
    _png_folder(root)
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(root / "masks" / "0.png")       # wrong size
    Image.fromarray(np.full((20, 24), 7, dtype=np.uint8)).save(root / "masks" / "1.png")     # label 7 of 3
    (root / "images" / "2.jpg").write_bytes(b"not a jpeg")                                     # unreadable
    Image.fromarray(np.zeros((20, 24, 3), dtype=np.uint8)).save(root / "images" / "9.png")    # no mask
    (root / "images" / "5.jpg").write_bytes((root / "images" / "3.jpg").read_bytes())
    (root / "masks" / "5.png").write_bytes((root / "masks" / "3.png").read_bytes())
    with caplog.at_level(logging.WARNING):
        bundle = build_segmentation_data(str(root), 16, val_fraction=0.5)
    assert sorted(bundle.skipped) == sorted(str(root / "images" / f) for f in ("0.jpg", "1.jpg", "2.jpg", "9.png"))
    text = caplog.text
    assert "mask" in text and "0.png is 10x10 but its image" in text and "has label 7 but there are 3 classes" in text
    assert "cannot decode" in text and "9.png has no mask" in text
    assert bundle.classes == ["background", "cat", "dog"]
    masks = torch.cat([bundle.train.masks, bundle.val.masks])
    assert masks.shape[1:] == (16, 16) and set(masks.unique().tolist()) <= {0, 1, 2, 255} and (masks == 255).any()


def test_folder_errors_are_one_line(tmp_path):
    (tmp_path / "a" / "images").mkdir(parents=True)
    (tmp_path / "a" / "masks").mkdir()
    with pytest.raises(VitlabError, match=r"^.*a: no image/mask pairs of the same name in images/ \+ masks/$"):
        build_segmentation_data(str(tmp_path / "a"), 16)
    with pytest.raises(VitlabError, match="is not a segmentation folder"):
        build_segmentation_data(str(tmp_path), 16)
    with pytest.raises(VitlabError, match="does not exist"):
        build_segmentation_data(str(tmp_path / "nope"), 16)


def test_volume_folder_reads_npy_and_nifti_and_skips_a_mismatch(tmp_path, caplog):
    root = tmp_path / "vol"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    train, _ = build_volumes(12, n_train=4, n_val=1)
    for i in range(3):
        np.save(root / "imagesTr" / f"c{i}.npy", train.images[i, 0].numpy().astype(np.float32) * 7.0)
        np.save(root / "labelsTr" / f"c{i}.npy", train.masks[i].numpy())
    affine = np.eye(4)
    nib.save(nib.Nifti1Image(train.images[3, 0].numpy().astype(np.int16), affine), root / "imagesTr" / "n.nii.gz")
    nib.save(nib.Nifti1Image(train.masks[3].numpy(), affine), root / "labelsTr" / "n.nii.gz")
    np.save(root / "imagesTr" / "bad.npy", np.zeros((12, 12, 12), np.float32))
    np.save(root / "labelsTr" / "bad.npy", np.zeros((12, 12, 11), np.uint8))
    (root / "dataset.json").write_text('{"labels": {"0": "background", "1": "e", "2": "b", "3": "t"}}')
    with caplog.at_level(logging.WARNING):
        bundle = build_segmentation_data(str(root), 12, spatial_dims=3, val_fraction=0.25)
    assert bundle.skipped == [str(root / "imagesTr" / "bad.npy")] and "12x12x11" in caplog.text
    assert bundle.classes == ["background", "e", "b", "t"] and bundle.spatial_dims == 3
    names = bundle.train.file_names + bundle.val.file_names
    assert sorted(names) == ["c0.npy", "c1.npy", "c2.npy", "n.nii.gz"]
    k = names.index("n.nii.gz")
    masks = torch.cat([bundle.train.masks, bundle.val.masks])
    assert torch.equal(masks[k], train.masks[3])                  # same size: the labels exactly as stored


def _blocks(dims, B=4, S=24):
    g = torch.Generator().manual_seed(dims)
    masks = torch.zeros(B, *([S] * dims), dtype=torch.long)
    for b in range(B):
        lo = torch.randint(2, 8, (dims,), generator=g)
        masks[(b, *[slice(int(v), int(v) + 10) for v in lo])] = 1
        masks[(b, *[slice(0, 4)] * dims)] = 1                      # an asymmetric corner: a flip shows
    return masks


@pytest.mark.parametrize("dims", [2, 3])
def test_augmentation_moves_image_and_mask_together(dims):
    masks = _blocks(dims)
    images = (masks * 255).to(torch.uint8)[:, None]               # the image is the mask
    aug = SegmentationAugment((0.0,), (1.0,), 16, dims, crop_scale=0.5, crop_prob=1.0, jitter=0.0)
    x, m = aug(images, masks, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, *([16] * dims)) and m.shape == (4, *([16] * dims)) and m.dtype == torch.long
    pure = (x[:, 0] == 0) | (x[:, 0] == 1)                        # bilinear value of four equal neighbours
    assert pure.float().mean() > 0.7
    assert torch.equal(m[pure], x[:, 0][pure].long())              # there nearest must give the same label
    aug.eval()
    x_eval, m_eval = aug(images, masks)                            # eval: resized only, still aligned
    pure_eval = (x_eval[:, 0] == 0) | (x_eval[:, 0] == 1)
    assert x_eval.shape[2:] == (16,) * dims and torch.equal(m_eval[pure_eval], x_eval[:, 0][pure_eval].long())
    assert not torch.equal(m, m_eval)                              # training did move things
