"""_common.train_all: runs trained in parallel processes give exactly the numbers of the same runs trained in
turn in this process (the runs are seeded by their config), in the order given; --jobs reaches the studies."""
import json

import pytest
import torch

from vitlab.studies import _common as common
from vitlab.studies import robustness


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _runs(root, data):
    return [dict(model=model, data=data, out=root / f"{model}-{seed}", epochs=1, seed=seed, img_size=16, quick=True)
            for model, seed in (("vit_micro_patch2_16", 0), ("resnet_micro_32", 1), ("vit_micro_patch2_16", 2))]


def test_parallel_runs_match_the_same_runs_in_turn(tmp_path, one_thread):
    data = common.shapes_folder(tmp_path / "data", 16, 6, 4)
    in_turn = common.train_all(_runs(tmp_path / "a", data), jobs=1)
    parallel = common.train_all(_runs(tmp_path / "b", data), jobs=2)
    timing = {"train_images_per_s", "wall_time_s"}
    assert [{k: v for k, v in m.items() if k not in timing} for m in parallel] == \
        [{k: v for k, v in m.items() if k not in timing} for m in in_turn]
    assert [m["model"] for m in parallel] == ["vit_micro_patch2_16", "resnet_micro_32", "vit_micro_patch2_16"]
    assert in_turn[0]["val_loss"] != in_turn[2]["val_loss"]            # seeds differ: the comparison can fail
    for run in _runs(tmp_path / "b", data):                            # each parallel run left its own run folder
        assert json.loads((run["out"] / "config.json").read_text())["train"]["seed"] == run["seed"]
        assert (run["out"] / "model.safetensors").is_file()


def test_jobs_argument_is_checked_and_defaults_to_the_cores():
    import argparse

    p = argparse.ArgumentParser()
    robustness.add_arguments(p)
    assert p.parse_args([]).jobs == common.default_jobs() >= 1
    assert p.parse_args(["--jobs", "2"]).jobs == 2
    with pytest.raises(SystemExit):
        p.parse_args(["--jobs", "0"])


def test_parallel_runs_of_another_training_function(tmp_path, one_thread):
    """fn= trains with a function other than the studies' recipe (the DINO study's own configs), in processes too:
    the same DINO metrics as in turn, and the entropy differs between the two seeds."""
    from vitlab.studies.dino import train_config

    def runs(root):
        return [dict(model="dino_vit_micro_patch4_32", data="scenes:8", out=str(root / f"dino-{seed}"), epochs=1,
                     batch_size=4, seed=seed, report=False) for seed in (0, 1)]
    in_turn = common.train_all(runs(tmp_path / "a"), jobs=1, fn=train_config)
    parallel = common.train_all(runs(tmp_path / "b"), jobs=2, fn=train_config)
    keys = ("teacher_entropy", "teacher_kl_uniform", "val_knn_top1", "top_prototype_share")
    assert [[m[k] for k in keys] for m in parallel] == [[m[k] for k in keys] for m in in_turn]
    assert in_turn[0]["teacher_entropy"] != in_turn[1]["teacher_entropy"]
