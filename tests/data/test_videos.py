"""`videos`: order-dependent captions with time-reversed twins in the same split; the real-format reader."""
import json

import pytest
import torch
from PIL import Image

from vitlab.data.videos import build_video_text_data, caption, reverse_events
from vitlab.errors import VitlabError


@pytest.fixture(scope="module")
def bundle():
    return build_video_text_data("videos:40", 32, seed=3, num_frames=6)


def test_shapes_counts_and_determinism(bundle):
    assert bundle.train.frames.shape == (40, 6, 3, 32, 32) and bundle.train.frames.dtype == torch.uint8
    assert len(bundle.val) == 10 and len(bundle.train.captions) == 40
    again = build_video_text_data("videos:40", 32, seed=3, num_frames=6)
    assert torch.equal(again.train.frames, bundle.train.frames) and again.val.captions == bundle.val.captions
    assert not torch.equal(build_video_text_data("videos:40", 32, seed=4).train.frames, bundle.train.frames)


def test_every_clip_has_its_time_reversed_twin_in_the_same_split_with_another_caption(bundle):
    for split in (bundle.train, bundle.val):
        for i, j in enumerate(split.twin):
            assert split.twin[j] == i and i != j
            assert torch.equal(split.frames[j], split.frames[i].flip(0))        # the same frames backwards
            assert split.captions[i] != split.captions[j]
            # the same multiset of frames: pooled over time (max or mean), the twins are identical
            assert torch.equal(split.frames[i].amax(0), split.frames[j].amax(0))


def test_captions_follow_event_order_and_reversal_inverts_them():
    events = [("red", "circle", "moves left"), ("orange", "square", "appears")]
    assert caption(events) == "a red circle moves left, then an orange square appears"
    assert caption(reverse_events(events)) == "an orange square disappears, then a red circle moves right"
    assert reverse_events(reverse_events(events)) == events


def test_pixels_show_what_the_caption_says(bundle):
    """An 'appears' object is absent from the first frame and present in the last (and the reverse)."""
    from vitlab.data.scenes import PALETTE

    checked = 0
    for frames, text in zip(bundle.train.frames, bundle.train.captions):
        phrases = text.split(", then ")
        if phrases[0].split()[1] == phrases[1].split()[1]:
            continue                                            # both objects one colour: not told apart here
        for phrase in phrases:
            words = phrase.split()
            colour, kind = words[1], words[3]
            if kind not in ("appears", "disappears"):
                continue
            rgb = torch.tensor(PALETTE[colour]).view(3, 1, 1)

            def present(frame, rgb=rgb):
                return int(((frame.int() - rgb).abs().max(0).values < 30).sum()) > 10

            assert present(frames[-1]) == (kind == "appears") and present(frames[0]) == (kind == "disappears"), text
            checked += 1
    assert checked > 5


def _write_frames(folder, n, colour):
    folder.mkdir(parents=True)
    for t in range(n):
        Image.new("RGB", (40, 30), colour).save(folder / f"{t:03d}.png")


def test_real_folder_reads_frame_folders_and_gifs_and_skips_bad_videos(tmp_path, caplog):
    _write_frames(tmp_path / "video0", 3, (200, 0, 0))
    _write_frames(tmp_path / "video1", 8, (0, 200, 0))
    frames = [Image.new("RGB", (20, 20), (0, 0, 10 * t)) for t in range(5)]
    frames[0].save(tmp_path / "video2.gif", save_all=True, append_images=frames[1:])
    (tmp_path / "video3.gif").write_bytes(b"GIF89a not really")                     # unreadable
    (tmp_path / "video4").mkdir()                                                    # no frames
    (tmp_path / "video5.mp4").write_bytes(b"\x00" * 64)                              # no PyAV or not a video
    sentences = [{"video_id": f"video{i}", "caption": f"clip number {i}"} for i in range(7)]   # video6: missing
    sentences.append({"video_id": "video0", "caption": "a second caption, not kept"})
    (tmp_path / "captions.json").write_text(json.dumps({"sentences": sentences}))
    bundle = build_video_text_data(str(tmp_path), 16, num_frames=4, val_fraction=0.34)
    assert len(bundle.train) + len(bundle.val) == 3
    assert len(bundle.skipped) == 4 and {s.split(":")[0] for s in bundle.skipped} == {
        "video3", "video4", "video5", "video6"}
    everything = torch.cat([bundle.train.frames, bundle.val.frames])
    assert everything.shape == (3, 4, 3, 16, 16)
    by_caption = dict(zip(bundle.train.captions + bundle.val.captions, everything))
    assert by_caption["clip number 0"][:, 0].float().mean() > 150              # red frames (3 repeated to 4)
    gif = by_caption["clip number 2"][:, 2].float().mean((1, 2))                # blue rises through the gif
    assert bool((gif[1:] >= gif[:-1]).all()) and gif[-1] > gif[0]
    assert "4 of 7 videos skipped" in caplog.text


def test_bad_specs_are_refused_in_one_line(tmp_path):
    with pytest.raises(VitlabError, match="videos:N with N >= 2"):
        build_video_text_data("videos:x", 32)
    with pytest.raises(VitlabError, match="at least 2 frames"):
        build_video_text_data("videos", 32, num_frames=1)
    with pytest.raises(VitlabError, match="no captions JSON"):
        build_video_text_data(str(tmp_path), 32)
    (tmp_path / "captions.json").write_text("{}")
    with pytest.raises(VitlabError, match="not an MSR-VTT captions JSON"):
        build_video_text_data(str(tmp_path), 32)


def _write_mp4(path, colours, size=32):
    """A short H.264/MPEG-4 clip with PyAV, one flat colour per frame."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for colour in colours:
            rgb = np.full((size, size, 3), colour, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())                                               # flush


def test_real_folder_reads_mp4_through_pyav_and_skips_a_corrupt_one(tmp_path, caplog):
    pytest.importorskip("av")
    greens = [(0, 25 * t, 0) for t in range(8)]                          # green rises frame by frame
    _write_mp4(tmp_path / "rising.mp4", greens)
    _write_mp4(tmp_path / "red.mp4", [(220, 0, 0)] * 3)                  # 3 frames, sampled up to 4
    good = (tmp_path / "rising.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(good[: len(good) // 8])           # truncated: unreadable
    sentences = [{"video_id": v, "caption": v} for v in ("rising", "red", "cut")]
    (tmp_path / "captions.json").write_text(json.dumps({"sentences": sentences}))
    bundle = build_video_text_data(str(tmp_path), 16, num_frames=4, val_fraction=0.5)
    assert [s.split(":")[0] for s in bundle.skipped] == ["cut"] and "1 of 3 videos skipped" in caplog.text
    by_caption = dict(zip(bundle.train.captions + bundle.val.captions,
                          torch.cat([bundle.train.frames, bundle.val.frames])))
    assert set(by_caption) == {"rising", "red"} and by_caption["rising"].shape == (4, 3, 16, 16)
    # even sampling of 8 frames at 4: frames 1, 3, 5, 7 -> green 25, 75, 125, 175 (lossy codec: within 12 levels)
    green = by_caption["rising"][:, 1].float().mean((1, 2))
    torch.testing.assert_close(green, torch.tensor([25.0, 75.0, 125.0, 175.0]), atol=12, rtol=0)
    red = by_caption["red"].float().mean((2, 3))                                 # (4, 3)
    assert bool((red[:, 0] > 190).all()) and bool((red[:, 1:] < 30).all())
