"""`vitlab study video-retrieval`: the quick mode writes the four rows, the lecture's figures, no verdict, the
rerun command and both pictures; the metrics read the right direction of the similarity matrix."""
import json

import torch

from vitlab.cli import main
from vitlab.data.videos import VideoSet
from vitlab.studies import video_retrieval as vr
from vitlab.studies.verdict import SMOKE_TEST


def test_quick_mode_writes_table_claims_and_pictures(tmp_path):
    out = tmp_path / "vr"
    assert main(["study", "video-retrieval", "--quick", "--out", str(out)]) == 0
    results = json.loads((out / "video_retrieval.json").read_text())
    assert [r["encoder"] for r in results["table"]] == list(vr.ROWS)
    assert results["table"][3]["MnR (lecture)"] == 26.7 and results["table"][0]["R@5 (lecture)"] == 51.3
    assert all(c["verdict"] == SMOKE_TEST for c in results["claims"]) and len(results["claims"]) == 3
    assert results["command"] == f"vitlab study video-retrieval --quick --out {out}"
    assert (out / "video_retrieval.png").stat().st_size > 5000
    assert (out / "video_retrieval_attention.png").stat().st_size > 5000


class _Oracle(torch.nn.Module):
    """Scores clip i against caption j by a fixed table: encode_video gives clip i's one-hot row, encode_text
    the table's row."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def encode_video(self, frames):
        return torch.nn.functional.one_hot(frames[:, 0, 0, 0, :len(self.table)].argmax(-1), len(self.table)).float()

    def encode_text(self, ids, mask):
        return self.table[ids[:, 1] - 4].float()


def test_evaluate_ranks_videos_for_each_caption():
    from vitlab.text.tokenizer import build_word_level

    captions = ["w0", "w1", "w2", "w3"]
    tok = build_word_level(captions, max_length=8)
    order = [tok.encode(c)[1] - 4 for c in captions]          # vocabulary position of each caption's word
    frames = torch.zeros(4, 2, 3, 4, 4, dtype=torch.uint8)
    for i in range(4):
        frames[i, :, :, :, i] = 255
    # caption of clip k prefers clips in this order (scores 4, 3, 2, 1 after the normalisation)
    prefs = {0: [0, 1, 2, 3], 1: [0, 1, 2, 3], 2: [3, 2, 1, 0], 3: [1, 0, 3, 2]}
    table = torch.zeros(4, 4)
    for k, pref in prefs.items():
        for place, clip in enumerate(pref):
            table[order[k], clip] = 4 - place
    m = vr.evaluate(_Oracle(table), VideoSet(frames, captions), tok, shuffled=False, seed=0)
    # ranks of the true clip: caption 0 -> 1, caption 1 -> 2, caption 2 -> 2, caption 3 -> 3
    assert m == {"R@1": 25.0, "R@5": 100.0, "R@10": 100.0, "MdR": 2.0, "MnR": 2.0}
