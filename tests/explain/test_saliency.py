import math

import pytest
import torch

from vitlab.errors import VitlabError
from vitlab.explain import itti_koch
from vitlab.explain.saliency import gaussian_pyramid, normalize

SIZE = 128


def disk(cy, cx, r=9):
    yy, xx = torch.meshgrid(torch.arange(float(SIZE)), torch.arange(float(SIZE)), indexing="ij")
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def assert_first_fixation_near(fixations, cy, cx, tol=SIZE / 12):
    y, x = fixations[0]
    assert math.hypot(y - cy, x - cx) < tol, (fixations[0], (cy, cx))


@pytest.mark.parametrize("centre", [(90, 30), (25, 100), (64, 64)])
def test_bright_blob_is_first_fixation(centre):
    img = torch.full((3, SIZE, SIZE), 0.2)
    img[:, disk(*centre)] = 1.0
    s = itti_koch(img, num_fixations=3)
    assert_first_fixation_near(s.fixations, *centre)
    assert len(s.fixations) == 3
    # inhibition of return: later fixations are elsewhere
    assert all(math.dist(s.fixations[0], f) > SIZE / 6 for f in s.fixations[1:])


@pytest.mark.parametrize("centre", [(40, 95), (100, 60)])
def test_odd_coloured_blob_is_first_fixation(centre):
    # Red on green of the same intensity: the intensity and orientation channels see a flat image; colour decides.
    img = torch.zeros(3, SIZE, SIZE)
    img[1] = 0.6
    m = disk(*centre)
    img[0, m], img[1, m] = 0.6, 0.0
    s = itti_koch((img * 255).to(torch.uint8), num_fixations=2)
    assert_first_fixation_near(s.fixations, *centre)
    assert float(s.conspicuity["colour"].max()) > 0
    assert float(s.conspicuity["intensity"].max()) < 1e-6


def test_normalisation_promotes_single_peak():
    one = torch.zeros(16, 16)
    one[4, 4] = 1.0
    many = torch.zeros(16, 16)
    many[2::4, 2::4] = 1.0
    many[2, 2] = 1.0
    torch.testing.assert_close(normalize(one).max(), torch.tensor(1.0))
    assert float(normalize(many).max()) < 1e-6          # equal peaks everywhere: suppressed to (1 - 1)^2 = 0


def test_pyramid_halves():
    sizes = [tuple(level.shape[-2:]) for level in gaussian_pyramid(torch.rand(5, 256, 256))]
    assert sizes == [(256 >> k, 256 >> k) for k in range(9)]


def test_bad_shape():
    with pytest.raises(VitlabError, match="RGB"):
        itti_koch(torch.rand(1, 32, 32))
