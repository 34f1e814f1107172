"""Translation end to end: numbers-en-fr generation (sizes, held-out numbers, French reordering), parallel files
(bad lines skipped and named, files of different lengths refused), exact match and BLEU against hand values, a
tiny training run whose loss falls, the tokenizer stored in the checkpoint, predict and explain through the CLI,
and bad input as one line."""
import json

import pytest

from vitlab.cli import main
from vitlab.data import parallel
from vitlab.data.parallel import build_parallel_data, english_french, numbers_en_fr, read_parallel_files
from vitlab.errors import VitlabError
from vitlab.tasks.translation import translation_scores


def test_french_numbers_reorder_and_merge():
    assert english_french(97) == ("ninety-seven", "quatre-vingt-dix-sept")
    assert english_french(71) == ("seventy-one", "soixante et onze")
    assert english_french(200) == ("two hundred", "deux cents")
    assert english_french(201) == ("two hundred and one", "deux cent un")
    assert english_french(1234) == ("one thousand, two hundred and thirty-four", "mille deux cent trente-quatre")


def test_numbers_sizes_and_held_out_disjoint():
    data = numbers_en_fr(train_size=300, val_size=50)
    assert (len(data.train), len(data.val)) == (300, 50)
    assert not set(data.train.numbers) & set(data.val.numbers)
    assert all(0 <= n < parallel.NUMBERS_MAX for n in data.train.numbers + data.val.numbers)
    assert data.val.pairs[0] == english_french(data.val.numbers[0])
    assert numbers_en_fr(train_size=300, val_size=50).val.numbers == data.val.numbers    # the same every run
    assert (parallel.NUMBERS_TRAIN, parallel.NUMBERS_VAL) == (20_000, 1_000)
    # digit counts drawn uniformly: about a sixth of the draws have one or two digits (a uniform draw over a
    # million numbers would give 0.01%): about 60 of these 350 (10 + 90 such numbers exist; 63 with this seed)
    short = sum(n < 100 for n in data.train.numbers + data.val.numbers)
    assert 40 <= short <= 100


def test_parallel_files_skip_empty_lines_and_refuse_mismatch(tmp_path):
    src, tgt = tmp_path / "en.txt", tmp_path / "fr.txt"
    src.write_text("one\n\ntwo\nthree\nfour\n")
    tgt.write_text("un\ndeux\ndeux\n \nquatre\n")
    data = read_parallel_files(src, tgt, val_fraction=0.34)
    assert data.skipped == [f"{src}:2: empty line", f"{tgt}:4: empty line"]
    assert len(data.train) + len(data.val) == 3 and len(data.val) == 1
    assert sorted(data.train.pairs + data.val.pairs) == [("four", "quatre"), ("one", "un"), ("two", "deux")]
    tgt.write_text("un\ndeux\n")
    with pytest.raises(VitlabError, match="en.txt has 5 lines but .*fr.txt has 2: not parallel"):
        read_parallel_files(src, tgt)
    with pytest.raises(VitlabError, match="expected numbers-en-fr or parallel:SRC_FILE,TGT_FILE"):
        build_parallel_data("parallel:onlyone")
    with pytest.raises(VitlabError, match="digits: not a translation data set"):
        build_parallel_data("digits")
    with pytest.raises(VitlabError, match="nope.txt: no such file"):
        build_parallel_data(f"parallel:{tmp_path / 'nope.txt'},{tgt}")


def test_exact_match_and_bleu_by_hand():
    import sacrebleu

    refs = ["quatre-vingt-dix-sept", "mille deux cent un", "cent"]
    assert translation_scores(refs, refs) == {"val_exact": 100.0, "val_bleu": pytest.approx(100.0)}
    hyps = ["quatre-vingt-dix-sept", "mille deux cent deux", "cent"]
    scores = translation_scores(hyps, refs)
    assert scores["val_exact"] == pytest.approx(200 / 3)
    # by hand: 6 hypothesis words, 5 matching unigrams; bigrams 2/3; trigrams 1/1 ... only one 3-gram and no
    # 4-gram: BLEU's geometric mean has a zero 4-gram precision, and sacrebleu's default (exp) smoothing is 0 then
    assert scores["val_bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert scores["val_bleu"] < 100.0


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny translation run on 240 numbers as parallel files (a few seconds on one thread)."""
    import torch

    from vitlab.train.run import TrainConfig, run_training

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("translation")
    pairs = [english_french(n) for n in range(240)]
    (root / "en.txt").write_text("\n".join(s for s, _ in pairs) + "\n\n")           # one empty line: skipped
    (root / "fr.txt").write_text("\n".join(t for _, t in pairs) + "\nzéro\n")
    cfg = TrainConfig(model="transformer_tiny", data=f"parallel:{root / 'en.txt'},{root / 'fr.txt'}",
                      out=str(root / "run"), epochs=4, batch_size=16, lr=2e-3, warmup_epochs=0.5,
                      schedule="noam", model_args={"dim": 32, "ffn_dim": 64, "dropout": 0.0})
    metrics = run_training(cfg)
    return root / "run", metrics


def test_tiny_run_loss_falls_and_checkpoint_keeps_the_tokenizer(run_dir):
    out, metrics = run_dir
    rows = (out / "metrics.csv").read_text().splitlines()
    header, first, last = rows[0].split(","), rows[1].split(","), rows[-1].split(",")
    i = header.index("train_loss")
    assert float(last[i]) < 0.7 * float(first[i])
    saved = json.loads((out / "metrics.json").read_text())
    assert {"val_exact", "val_bleu"} <= set(saved) and saved["skipped_images"] == 1
    assert 0.0 <= saved["val_exact"] <= 100.0 and 0.0 <= saved["val_bleu"] <= 100.0
    config = json.loads((out / "config.json").read_text())
    assert config["task_extras"]["tokenizer"]["specials"]["bos"] == "<s>"
    assert (out / "alignment_0.png").is_file() and (out / "translations.txt").is_file()

    from vitlab.checkpoint import load_model

    model = load_model(out)
    assert model.tokenizer is not None and model.tokenizer.vocab_size == model.cfg.num_classes


def test_predict_and_explain_through_the_cli(run_dir, capsys, tmp_path):
    out, _ = run_dir
    from vitlab.checkpoint import load_model

    expected = load_model(out).translate(["ninety-seven", "twelve"])
    assert main(["predict", "--checkpoint", str(out), "ninety-seven", "twelve"]) == 0
    assert capsys.readouterr().out.splitlines() == expected
    assert main(["explain", "--checkpoint", str(out), "ninety-seven", "--out", str(tmp_path / "ex")]) == 0
    printed = capsys.readouterr().out
    assert f"ninety-seven -> {expected[0]}" in printed and "2 figures" in printed
    assert (tmp_path / "ex" / "alignment_0.png").is_file() and (tmp_path / "ex" / "alignment_0_heads.png").is_file()
    assert (tmp_path / "ex" / "index.html").is_file()


@pytest.mark.parametrize("argv,message", [
    (["predict", "--checkpoint", "{run}", "ninety-zebra"], "not in the model's vocabulary: 'zebra'"),
    (["predict", "--checkpoint", "{run}", "one " * 70], "is longer than the maximum 64"),
    (["predict", "--checkpoint", "transformer_tiny", "one"], "transformer_tiny has no tokenizer"),
    (["train", "--model", "transformer_tiny", "--data", "digits"], "digits: not a translation data set"),
    (["train", "--model", "transformer_tiny", "--img-size", "32"], "--img-size: image options"),
    (["train", "--model", "vit_micro_patch2_8", "--data", "numbers-en-fr"], "numbers-en-fr is text for translation"),
    (["train", "--schedule", "bogus"], "--schedule must be one of"),
])
def test_bad_input_is_one_line(run_dir, capsys, tmp_path, argv, message):
    argv = [a.replace("{run}", str(run_dir[0])) for a in argv]
    if argv[0] == "train":
        argv += ["--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_empty_sentence_refused(run_dir):
    from vitlab.checkpoint import load_model
    from vitlab.tasks.translation import check_sentences

    with pytest.raises(VitlabError, match="an empty sentence"):
        check_sentences(load_model(run_dir[0]).tokenizer, ["one", "  "])


def test_resume_keeps_the_vocabulary_and_refuses_another(run_dir, tmp_path):
    import shutil

    from vitlab.train.run import load_run_config, run_training

    out = tmp_path / "run"
    shutil.copytree(run_dir[0], out)
    metrics = run_training(load_run_config(out, epochs=5), resume=True)
    assert metrics["epochs"] == 5
    config = json.loads((out / "config.json").read_text())
    config["task_extras"]["tokenizer"]["max_length"] = 99          # as if the data now gave another vocabulary
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(VitlabError, match="other task extras .*cannot resume"):
        run_training(load_run_config(out, epochs=6), resume=True)
