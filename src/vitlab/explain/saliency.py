"""Bottom-up saliency (Itti, Koch & Niebur, "A Model of Saliency-Based Visual Attention for Rapid Scene
Analysis", IEEE TPAMI 20(11) 1998): no learning, only low-level features.

1. Nine-level dyadic Gaussian pyramids (scale 0 = the image, scale 8 = 1/256 of it) of intensity
   I = (r + g + b) / 3, four broadly tuned colours R, G, B, Y, and Gabor orientation energy O(theta) at
   0, 45, 90, 135 degrees.
2. Centre-surround differences between a centre scale c in {2, 3, 4} and a surround scale s = c + delta,
   delta in {3, 4} (the surround upsampled to the centre): 6 intensity, 12 colour-opponency (red/green,
   blue/yellow) and 24 orientation maps.
3. N(.): each map scaled to [0, 1], then multiplied by (M - m)^2 with M its global maximum and m the mean of its
   other local maxima, so a map with one strong peak is promoted and one with many similar peaks suppressed.
4. Conspicuity maps at scale 4 (across-scale sums), saliency S = (N(I) + N(C) + N(O)) / 3.
5. Winner-take-all picks the most salient location; inhibition of return suppresses a disk around it
   (radius 1/6 of the smaller image side, as the paper's focus of attention) and the next winner follows.
   (The paper's WTA is a network of integrate-and-fire neurons; for a static image its winner is the maximum,
   which is what we take: the order of fixations, not their timing.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import VitlabError

CENTRE_SCALES = (2, 3, 4)
DELTAS = (3, 4)
ORIENTATIONS = (0.0, 45.0, 90.0, 135.0)
MAP_SCALE = 4                    # the scale of the conspicuity and saliency maps
LEVELS = 9


@dataclass
class Saliency:
    """saliency (h, w) at scale 4 of the working image, in [0, 1]; conspicuity maps by name (same size);
    fixations: the first K foci of attention as (y, x) in pixels of the input image, in order."""
    saliency: Tensor
    conspicuity: dict[str, Tensor]
    fixations: list[tuple[float, float]]


def itti_koch(image: Tensor, num_fixations: int = 5, work_size: int = 256) -> Saliency:
    """Saliency of one image: (3, H, W), uint8 or float in [0, 1]. The image is resized to work_size on its
    shorter side so that the nine-level pyramid exists even for small images."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise VitlabError(f"saliency needs one RGB image (3, H, W), got shape {tuple(image.shape)}")
    img = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    H, W = img.shape[1:]
    scale = work_size / min(H, W)
    img = F.interpolate(img[None], size=(round(H * scale), round(W * scale)), mode="bilinear", antialias=True,
                        align_corners=False)[0].clamp(0, 1)
    r, g, b = img.unbind(0)
    intensity = (r + g + b) / 3
    colours = broadly_tuned_colours(r, g, b, intensity)                 # (4, h, w): R, G, B, Y
    pyr = gaussian_pyramid(torch.cat([intensity[None], colours]))       # per level (5, h_l, w_l)
    I_pyr = [level[0] for level in pyr]
    RG_pyr = [level[1] - level[2] for level in pyr]                     # red/green opponency
    BY_pyr = [level[3] - level[4] for level in pyr]                     # blue/yellow opponency
    O_pyr = [gabor_energy(level) for level in I_pyr]                    # per level (4 orientations, h_l, w_l)
    size = tuple(I_pyr[MAP_SCALE].shape)

    intensity_maps = [centre_surround(I_pyr[c], I_pyr[s]) for c, s in _pairs()]
    rg = [centre_surround(RG_pyr[c], RG_pyr[s]) for c, s in _pairs()]
    by = [centre_surround(BY_pyr[c], BY_pyr[s]) for c, s in _pairs()]
    orientation_maps = [centre_surround(O_pyr[c], O_pyr[s]) for c, s in _pairs()]   # each (4, h_c, w_c)
    conspicuity = {
        "intensity": across_scale_sum([normalize(m) for m in intensity_maps], size),
        "colour": across_scale_sum([normalize(a) + normalize(b) for a, b in zip(rg, by)], size),
        "orientation": sum(normalize(across_scale_sum([normalize(m[t]) for m in orientation_maps], size))
                           for t in range(len(ORIENTATIONS))),
    }
    saliency = sum(normalize(m) for m in conspicuity.values()) / 3
    saliency = saliency / saliency.max().clamp_min(1e-12)
    return Saliency(saliency, conspicuity, winner_take_all(saliency, num_fixations, (H, W)))


def _pairs() -> list[tuple[int, int]]:
    return [(c, c + d) for c in CENTRE_SCALES for d in DELTAS]


def broadly_tuned_colours(r: Tensor, g: Tensor, b: Tensor, intensity: Tensor) -> Tensor:
    """R, G, B, Y of the paper, stacked (4, h, w): hue decoupled from intensity by dividing by I where
    I > max(I)/10 (elsewhere hue is not perceivable and set to 0); negative values clipped to 0."""
    lit = intensity > intensity.max() / 10
    norm = torch.where(lit, intensity, torch.ones_like(intensity))
    r, g, b = (torch.where(lit, c / norm, torch.zeros_like(c)) for c in (r, g, b))
    return torch.stack([r - (g + b) / 2, g - (r + b) / 2, b - (r + g) / 2,
                        (r + g) / 2 - (r - g).abs() / 2 - b]).clamp_min(0)


def gaussian_pyramid(x: Tensor, levels: int = LEVELS) -> list[Tensor]:
    """(C, h, w) -> list of `levels` maps (C, h_l, w_l), each blurred with the 5-tap binomial filter and halved."""
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    C = x.shape[0]
    out = [x]
    for _ in range(levels - 1):
        y = out[-1][None]                                                # (1, C, h, w)
        if min(y.shape[-2:]) > 2:
            y = F.pad(y, (2, 2, 2, 2), mode="reflect")
            y = F.conv2d(y, k.view(1, 1, 1, 5).expand(C, 1, 1, 5), groups=C)
            y = F.conv2d(y, k.view(1, 1, 5, 1).expand(C, 1, 5, 1), groups=C)
        out.append(y[0, :, ::2, ::2] if min(y.shape[-2:]) > 1 else y[0])
    return out


def centre_surround(centre: Tensor, surround: Tensor) -> Tensor:
    """|centre (-) surround| of (h, w) or (C, h, w) maps: the coarse surround interpolated to the centre's size,
    then a point-by-point difference.

    For colour the paper writes RG(c, s) = |(R(c) - G(c)) (-) (G(s) - R(s))|; we take the centre-surround
    difference of the same opponent signal, |RG(c) - RG(s)|, which responds where the colour differs from its
    surround (the literal formula would add the centre and surround signals)."""
    up = F.interpolate(surround.reshape(1, -1, *surround.shape[-2:]), size=centre.shape[-2:], mode="bilinear",
                       align_corners=False).view(centre.shape)
    return (centre - up).abs()


def across_scale_sum(maps: list[Tensor], size: tuple[int, int]) -> Tensor:
    """The paper's across-scale addition: each map resampled to `size`, summed point by point."""
    return sum(F.interpolate(m[None, None], size=size, mode="area" if m.shape[0] >= size[0] else "bilinear")[0, 0]
               for m in maps)


def gabor_kernel(theta_deg: float, wavelength: float = 4.0, sigma: float = 1.75, size: int = 9) -> Tensor:
    """Gabor quadrature pair (2, size, size): even (cosine, zero mean) and odd (sine) parts."""
    t = math.radians(theta_deg)
    ax = torch.arange(size, dtype=torch.float64) - size // 2
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    u = x * math.cos(t) + y * math.sin(t)                               # coordinate across the stripes
    envelope = torch.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2))
    even = envelope * torch.cos(2 * math.pi * u / wavelength)
    even = even - envelope * even.sum() / envelope.sum()                # no response to flat regions
    odd = envelope * torch.sin(2 * math.pi * u / wavelength)
    return torch.stack([even, odd]).float()


def gabor_energy(x: Tensor) -> Tensor:
    """Orientation energy sqrt(even^2 + odd^2) of a (h, w) map at each of ORIENTATIONS: (4, h, w) (tiny levels,
    smaller than the filter, give zeros)."""
    k = torch.cat([gabor_kernel(t) for t in ORIENTATIONS])[:, None]    # (8, 1, size, size): even, odd per angle
    pad = k.shape[-1] // 2
    if min(x.shape) <= pad:
        return x.new_zeros(len(ORIENTATIONS), *x.shape)
    y = F.conv2d(F.pad(x[None, None], (pad,) * 4, mode="reflect"), k)[0]   # (8, h, w)
    return y.view(len(ORIENTATIONS), 2, *x.shape).pow(2).sum(1).sqrt()


def normalize(m: Tensor, floor: float = 0.1) -> Tensor:
    """The N(.) operator: scale to [0, 1], then multiply by (1 - mean of the other local maxima)^2.

    Local maxima are 3x3 peaks; those below `floor` of the maximum are numerical ripple and do not count."""
    m = m - m.min()
    top = m.max()
    if top <= 0:
        return m
    m = m / top
    peaks = (m == F.max_pool2d(m[None, None], 3, stride=1, padding=1)[0, 0]) & (m >= floor)
    others = m[peaks].sort(descending=True).values[1:]                   # all peaks but the global maximum
    mean_others = others.mean() if others.numel() else m.new_zeros(())
    return m * (1.0 - mean_others) ** 2


def winner_take_all(saliency: Tensor, k: int, image_size: tuple[int, int]) -> list[tuple[float, float]]:
    """First k foci of attention (y, x) in pixels of an image_size image: the maximum, then inhibition of return
    (a disk of radius min(H, W)/6 set to zero) and the next maximum."""
    H, W = image_size
    h, w = saliency.shape
    s = saliency.clone()
    yy, xx = torch.meshgrid((torch.arange(h) + 0.5) * H / h, (torch.arange(w) + 0.5) * W / w, indexing="ij")
    radius = min(H, W) / 6
    fixations = []
    for _ in range(k):
        idx = int(s.argmax())
        y, x = float(yy.flatten()[idx]), float(xx.flatten()[idx])
        fixations.append((y, x))
        s = s.masked_fill((yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2, -1.0)
    return fixations


def upsample(m: Tensor, size: tuple[int, int]) -> Tensor:
    """A (h, w) map bilinearly resized to `size` (for display over the image)."""
    return F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
