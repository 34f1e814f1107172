"""DINO's colour jitter options: `hue_jitter` reaches kornia's ColorJitter and moves hues round the wheel, the
grayscale probability is kept, and out-of-range values are refused in one line."""
import pytest
import torch

import vitlab
from vitlab.errors import VitlabError
from vitlab.tasks.self_supervised import MultiCropAugment, SelfSupervisedTask

MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def _dominant_channels(hue: float) -> set[int]:
    """The brightest channel of each global view of a pure-red image (grayscale and solarize off)."""
    torch.manual_seed(0)
    aug = MultiCropAugment(16, 8, 0, (0.9, 1.0), (0.05, 0.4), MEAN, STD, hue=hue, grayscale_p=0.0)
    aug.global2 = aug.global1                         # no solarisation: it would swap the channels' order
    red = torch.zeros(64, 3, 16, 16, dtype=torch.uint8)
    red[:, 0] = 220
    red[:, 1:] = 30
    views, _ = aug(red, torch.zeros(64, dtype=torch.long))           # (128, 3, 16, 16)
    return set(views.mean(dim=(2, 3)).argmax(dim=1).tolist())


def test_paper_hue_keeps_red_red_and_half_wheel_reaches_other_channels():
    assert _dominant_channels(0.1) == {0}            # +-36 degrees around red: red stays the brightest channel
    assert _dominant_channels(0.5) >= {0, 1, 2}      # any hue: green- and blue-dominant views appear


def test_config_fields_reach_the_augmentation():
    model = vitlab.create_model("dino_vit_micro_patch4_32", out_dim=16, hidden_dim=32, bottleneck_dim=8,
                                hue_jitter=0.5, grayscale_p=0.6, colour_jitter=[0.8, 0.7, 0.6], colour_jitter_p=1.0)
    aug = SelfSupervisedTask().augment(None, model, None, 32)
    for view in (aug.global1, aug.global2, aug.local):
        jitter = next(op for op in view if type(op).__name__ == "ColorJitter")
        gray = next(op for op in view if type(op).__name__ == "RandomGrayscale")
        assert jitter.hue == pytest.approx(0.5)
        assert gray.p == pytest.approx(0.6)
        assert jitter.p == pytest.approx(1.0)
        assert [jitter.brightness, jitter.contrast, jitter.saturation] == pytest.approx([0.8, 0.7, 0.6])


def test_strong_brightness_jitter_spreads_a_grey_level_further():
    """The brightness of a grey image's views spreads about twice as far at strength 0.8 as at the paper's 0.4."""
    def spread(strength: float) -> float:
        torch.manual_seed(0)
        aug = MultiCropAugment(16, 8, 0, (0.9, 1.0), (0.05, 0.4), MEAN, STD, grayscale_p=0.0,
                               jitter=(strength, 0.0, 0.0), jitter_p=1.0)
        views, _ = aug(torch.full((256, 3, 16, 16), 100, dtype=torch.uint8), torch.zeros(256, dtype=torch.long))
        return float(views[:256].mean(dim=(1, 2, 3)).std())           # the unsolarised global views
    assert 1.6 < spread(0.8) / spread(0.4) < 2.4


@pytest.mark.parametrize("kw, message", [
    ({"hue": 0.7}, "hue_jitter must be in [0, 0.5] (a fraction of the colour wheel), got 0.7"),
    ({"grayscale_p": 1.5}, "grayscale_p must be a probability in [0, 1], got 1.5"),
])
def test_out_of_range_jitter_is_refused(kw, message):
    with pytest.raises(VitlabError) as e:
        MultiCropAugment(16, 8, 0, (0.4, 1.0), (0.05, 0.4), MEAN, STD, **kw)
    assert str(e.value) == message
