"""DINOConfig is checked when the model is built: each meaningless value gets one line naming the field, from the
library and from `vitlab train` (exit 2, before any file is written)."""
import pytest

import vitlab
from vitlab.cli import main
from vitlab.errors import VitlabError

SMALL = {"out_dim": 16, "hidden_dim": 32, "bottleneck_dim": 8}


@pytest.mark.parametrize("kw, message", [
    ({"teacher_temp": 0.0}, "DINO teacher_temp must be > 0, got 0.0"),
    ({"student_temp": -0.1}, "DINO student_temp must be > 0, got -0.1"),
    ({"momentum_teacher": 1.5}, "DINO momentum_teacher must be in [0, 1], got 1.5"),
    ({"center_momentum": 1.0}, "DINO center_momentum must be in [0, 1), got 1.0"),
    ({"weight_decay_end": -0.4}, "DINO weight_decay_end must be >= 0, got -0.4"),
    ({"num_local_crops": -1}, "DINO num_local_crops must be an integer >= 0, got -1"),
    ({"out_dim": 0}, "DINO out_dim must be a positive integer, got 0"),
    ({"local_crops_scale": (0.5, 0.2)},
     "DINO local_crops_scale must be two area fractions 0 < low <= high <= 1, got (0.5, 0.2)"),
    ({"global_crops_scale": (0.4, 1.2)},
     "DINO global_crops_scale must be two area fractions 0 < low <= high <= 1, got (0.4, 1.2)"),
    ({"drop_path_rate": 1.0}, "DINO drop_path_rate must be in [0, 1), got 1.0"),
    ({"hue_jitter": 0.7}, "hue_jitter must be in [0, 0.5] (a fraction of the colour wheel), got 0.7"),
    ({"grayscale_p": -0.1}, "grayscale_p must be a probability in [0, 1], got -0.1"),
    ({"colour_jitter_p": 2.0}, "colour_jitter_p must be a probability in [0, 1], got 2.0"),
    ({"colour_jitter": 0.8},
     "colour_jitter must be three strengths in [0, 1] (brightness, contrast, saturation), got 0.8"),
    ({"colour_jitter": [0.8, 0.8]},
     "colour_jitter must be three strengths in [0, 1] (brightness, contrast, saturation), got (0.8, 0.8)"),
    ({"colour_jitter": (0.8, 1.5, 0.8)},
     "colour_jitter must be three strengths in [0, 1] (brightness, contrast, saturation), got (0.8, 1.5, 0.8)"),
])
def test_bad_fields_are_refused_when_the_model_is_built(kw, message):
    with pytest.raises(VitlabError) as e:
        vitlab.create_model("dino_vit_micro_patch4_32", **{**SMALL, **kw})
    assert str(e.value) == message


def test_the_papers_values_and_their_edges_build():
    model = vitlab.create_model("dino_vit_micro_patch4_32", **SMALL, momentum_teacher=1.0, num_local_crops=0,
                                weight_decay_end=0.0, local_crops_scale=(0.4, 0.4), hue_jitter=0.5)
    assert model.cfg.local_crops_scale == (0.4, 0.4) and model.cfg.num_local_crops == 0


def test_cli_refuses_before_writing(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--model", "dino_vit_micro_patch4_32", "--data", "scenes:16", "--model-arg",
                 "teacher_temp=-1", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["vitlab train: error: DINO teacher_temp must be > 0, got -1"]
    assert not out.exists()
