"""`videos`: generated clips of T frames whose captions depend on the ORDER of two events, and a reader for a folder
of real videos with an MSR-VTT-style captions JSON; both give uint8 frames (N, T, 3, S, S) + one caption per clip.

    bundle = build_video_text_data("videos", 32, seed=0)            # or "videos:N", or "DIR" / "DIR:captions.json"
    bundle.train.frames (N, T, 3, S, S) uint8, bundle.train.captions [str] * N, bundle.train.twin [int] * N

A generated clip shows two objects (the `scenes` shapes and palette, drawn with scenes.render_objects) and two
events, one in each half of the clip: an object appears, disappears, or moves left/right/up/down. The caption says
them in order: "a red circle moves left, then a blue square appears".

Why order matters: every clip is generated together with its time-reversed twin (the same frames played
backwards) and both go to the same split, next to each other. Reversing time swaps the events' order and inverts
each (appears <-> disappears, left <-> right, up <-> down), so the twin's caption is another sentence about the same
two objects on the same background: "a blue square disappears, then a red circle moves right". The twins hold the
same multiset of frames, so any model that pools frame features without their order (max or mean over time)
gives both clips the same embedding and cannot rank a caption above its twin's: the order of the frames is the only
thing that separates them. Other clips differ in their objects, events or background, so the rest of the ranking is
the ordinary colour/shape/event problem.

Real format: DIR holds one entry per video, `<video_id>/` (a folder of frames, png/jpg, in name order) or
`<video_id>.gif` (PIL) or `<video_id>.mp4|.webm|.avi|.mkv` (only when PyAV is importable), and a captions JSON
(DIR/captions.json or given after a colon) in MSR-VTT's layout: {"sentences": [{"video_id": ..., "caption": ...},
...]} (the first caption of each video is kept). T frames are sampled evenly over each video. A video that cannot
be read, has no frame, or has no caption is skipped, named and counted.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import VitlabError
from .scenes import PALETTE, ObjectSpec, render_objects, textured_background
from .shapes import SHAPE_CLASSES

log = logging.getLogger(__name__)

EVENTS = ("appears", "disappears", "moves left", "moves right", "moves up", "moves down")
REVERSED = {"appears": "disappears", "disappears": "appears", "moves left": "moves right",
            "moves right": "moves left", "moves up": "moves down", "moves down": "moves up"}
_STEP = {"moves left": (-1, 0), "moves right": (1, 0), "moves up": (0, -1), "moves down": (0, 1)}
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov")
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg")
GENERATED_TRAIN, NUM_FRAMES = 2000, 6
_RADIUS, _SPEED = 0.14, 0.09          # object radius and motion per frame, as fractions of the frame side
_PLACEMENT_TRIES = 30


@dataclass
class VideoSet:
    """N clips with one caption each."""
    frames: Tensor                                   # (N, T, 3, S, S) uint8
    captions: list[str]
    twin: list[int] = field(default_factory=list)    # index of each clip's time-reversed twin (-1: none)
    skipped: list[str] = field(default_factory=list)  # "name: reason" of each unreadable video

    def __len__(self) -> int:
        return len(self.captions)


@dataclass
class VideoTextBundle:
    train: VideoSet
    val: VideoSet
    name: str

    @property
    def skipped(self) -> list[str]:
        return self.train.skipped + self.val.skipped


def build_video_text_data(spec: str, image_size: int = 32, *, seed: int = 0, num_frames: int = NUM_FRAMES,
                          val_fraction: float = 0.2) -> VideoTextBundle:
    """`videos` / `videos:N` (N generated training clips, N/4 val, rounded to twin pairs) or a video folder
    (`DIR`, `DIR:captions.json`), split at random into train and val (val_fraction)."""
    if num_frames < 2:
        raise VitlabError(f"a clip needs at least 2 frames, got {num_frames}")
    if spec == "videos" or spec.startswith("videos:"):
        n_train = GENERATED_TRAIN
        if ":" in spec:
            count = spec.split(":", 1)[1]
            if not count.isdigit() or int(count) < 2:
                raise VitlabError(f"data spec {spec!r}: expected videos:N with N >= 2 training clips")
            n_train = int(count)
        return generated_videos(image_size, seed=seed, n_train=n_train, n_val=max(2, n_train // 4),
                                num_frames=num_frames)
    folder, _, captions = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
    videos = read_video_folder(folder, captions or None, image_size, num_frames)
    if len(videos) < 2:
        raise VitlabError(f"{spec}: {len(videos)} readable videos with captions; at least 2 are needed")
    order = torch.randperm(len(videos), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(len(videos) * val_fraction))
    sets = [VideoSet(videos.frames[idx], [videos.captions[i] for i in idx], [-1] * len(idx))
            for idx in (order[n_val:], order[:n_val])]
    sets[0].skipped = videos.skipped
    return VideoTextBundle(sets[0], sets[1], str(spec))


# --- generated clips -------------------------------------------------------------------------------------------
def generated_videos(image_size: int = 32, *, seed: int = 0, n_train: int = GENERATED_TRAIN, n_val: int = 500,
                     num_frames: int = NUM_FRAMES) -> VideoTextBundle:
    """Train and val clips from their own streams of seed; each count rounded up to whole twin pairs."""
    if image_size < 16:
        raise VitlabError(f"generated videos need frames of at least 16 px, got {image_size}")
    sets = [generate_videos(math.ceil(n / 2), image_size, num_frames, np.random.default_rng([seed % 2**64, stream]))
            for stream, n in enumerate((n_train, n_val))]
    return VideoTextBundle(sets[0], sets[1], "videos")


def generate_videos(n_pairs: int, image_size: int, num_frames: int, rng: np.random.Generator) -> VideoSet:
    """2 n_pairs clips: clip 2i drawn from rng, clip 2i + 1 its time-reversed twin (frames and caption)."""
    S, T = image_size, num_frames
    frames = torch.empty(2 * n_pairs, T, 3, S, S, dtype=torch.uint8)
    captions, twin = [], []
    for i in range(n_pairs):
        clip, events = _sample_clip(rng, S, T)                                    # (T, S, S, 3) uint8
        frames[2 * i] = torch.from_numpy(clip).permute(0, 3, 1, 2)
        frames[2 * i + 1] = frames[2 * i].flip(0)
        captions += [caption(events), caption(reverse_events(events))]
        twin += [2 * i + 1, 2 * i]
    return VideoSet(frames, captions, twin)


Event = tuple[str, str, str]          # (colour, shape, what happens): one event per half of the clip


def caption(events: list[Event]) -> str:
    """[("red", "circle", "moves left"), ("blue", "square", "appears")] ->
    "a red circle moves left, then a blue square appears"."""
    return ", then ".join(f"{'an' if c[0] in 'aeiou' else 'a'} {c} {s} {kind}" for c, s, kind in events)


def reverse_events(events: list[Event]) -> list[Event]:
    """What the clip played backwards shows: the events in the other order, each inverted."""
    return [(c, s, REVERSED[kind]) for c, s, kind in reversed(events)]


def _sample_clip(rng: np.random.Generator, S: int, T: int) -> tuple[np.ndarray, list[Event]]:
    """One clip (T, S, S, 3) uint8 of two distinct objects, object k's event in half k of the clip, the two kept
    apart (up to _PLACEMENT_TRIES draws) in every frame that shows both."""
    colours = list(PALETTE)
    picks = rng.choice(len(colours) * len(SHAPE_CLASSES), size=2, replace=False)   # distinct colour-shape pairs
    kinds = [EVENTS[int(k)] for k in rng.integers(len(EVENTS), size=2)]
    radius = _RADIUS * S
    for _ in range(_PLACEMENT_TRIES):          # objects kept apart in every frame both are visible in
        tracks = [_track(rng, S, T, half, kind) for half, kind in zip(((0, T // 2), (T // 2, T)), kinds)]
        (ca, va), (cb, vb) = tracks
        both = va & vb
        if not both.any() or np.hypot(*(ca[both] - cb[both]).T).min() >= 2.2 * radius:
            break
    background = textured_background(rng, S)
    objects = [(colours[int(p) // len(SHAPE_CLASSES)], SHAPE_CLASSES[int(p) % len(SHAPE_CLASSES)]) for p in picks]
    angles = rng.uniform(0, 2 * math.pi, 2)
    clip = np.empty((T, S, S, 3), dtype=np.uint8)
    for t in range(T):
        specs = [ObjectSpec(shape, colour, "large", float(c[t, 0]), float(c[t, 1]), radius, float(a),
                            PALETTE[colour])
                 for (colour, shape), (c, vis), a in zip(objects, tracks, angles) if vis[t]]
        image, _ = render_objects(background, specs)
        clip[t] = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return clip, [(c, s, k) for (c, s), k in zip(objects, kinds)]


def _track(rng: np.random.Generator, S: int, T: int, half: tuple[int, int], kind: str) -> tuple[np.ndarray,
                                                                                                 np.ndarray]:
    """An object's (T, 2) centres and (T,) visibility for its event `kind` in frames half = [start, stop)."""
    radius, speed = _RADIUS * S, _SPEED * S
    start, stop = half
    moves = stop - start - 1                                                 # motion steps inside the half
    dx, dy = _STEP.get(kind, (0, 0))
    lo = [radius + max(0, -d) * speed * moves for d in (dx, dy)]
    hi = [S - radius - max(0, d) * speed * moves for d in (dx, dy)]
    x0, y0 = (float(rng.uniform(a, b)) for a, b in zip(lo, hi))
    steps = np.clip(np.arange(T) - start, 0, moves)                           # (T,) steps taken by frame t
    centres = np.stack([x0 + dx * speed * steps, y0 + dy * speed * steps], 1)  # (T, 2)
    visible = np.ones(T, dtype=bool)
    if kind == "appears":
        visible[:start + 1] = False          # absent through the half's first frame, there from its second
    elif kind == "disappears":
        visible[stop - 1:] = False           # there until the half's last frame, gone from it on
    return centres, visible


# --- real videos -------------------------------------------------------------------------------------------------
def read_video_folder(root: str | Path, captions_json: str | Path | None, image_size: int,
                      num_frames: int = NUM_FRAMES) -> VideoSet:
    """Every captioned video of root as T evenly sampled frames; unreadable ones skipped, named and counted."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise VitlabError(f"{root}: expected 'videos', 'videos:N' or a folder of videos with a captions JSON")
    path = Path(captions_json) if captions_json else root / "captions.json"
    captions = read_captions_json(path)
    frames, kept, skipped = [], [], []
    for video_id, text in captions.items():
        try:
            frames.append(load_video(_find_video(root, video_id), image_size, num_frames))
            kept.append(text)
        except VitlabError as e:
            skipped.append(f"{video_id}: {e}")
    for line in skipped:
        log.warning("skipped video %s", line)
    if skipped:
        log.warning("%s: %d of %d videos skipped", root, len(skipped), len(captions))
    stacked = torch.stack(frames) if frames else torch.empty(0, num_frames, 3, image_size, image_size,
                                                             dtype=torch.uint8)
    return VideoSet(stacked, kept, [-1] * len(kept), skipped)


def read_captions_json(path: Path) -> dict[str, str]:
    """MSR-VTT layout {"sentences": [{"video_id", "caption"}, ...]} -> {video_id: its first caption}."""
    try:
        data = json.loads(Path(path).read_text())
        sentences = data["sentences"]
    except FileNotFoundError:
        raise VitlabError(f"{path}: no captions JSON") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise VitlabError(f"{path}: not an MSR-VTT captions JSON ({type(e).__name__}: {e})") from None
    out: dict[str, str] = {}
    for s in sentences:
        if isinstance(s, dict) and str(s.get("caption", "")).strip() and "video_id" in s:
            out.setdefault(str(s["video_id"]), str(s["caption"]).strip())
    return out


def _find_video(root: Path, video_id: str) -> Path:
    for candidate in [root / video_id] + [root / (video_id + ext) for ext in (".gif",) + VIDEO_EXTENSIONS]:
        if candidate.exists():
            return candidate
    raise VitlabError("no such video (a frame folder, .gif or video file)")


def load_video(path: Path, image_size: int, num_frames: int) -> Tensor:
    """A frame folder, GIF or (with PyAV) video file -> (T, 3, S, S) uint8, T frames sampled evenly."""
    from PIL import Image

    from .decode import load_image

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS)
        if not files:
            raise VitlabError("frame folder holds no png/jpg frame")
        return torch.stack([load_image(files[i], image_size) for i in _even(len(files), num_frames)])
    if path.suffix.lower() == ".gif":
        try:
            with Image.open(path) as gif:
                count = getattr(gif, "n_frames", 1)
                images = []
                for i in _even(count, num_frames):
                    gif.seek(i)
                    images.append(_pil_to_uint8(gif.convert("RGB"), image_size))
        except (OSError, ValueError, EOFError) as e:
            raise VitlabError(f"unreadable GIF ({e})") from None
        return torch.stack(images)
    return _load_with_pyav(path, image_size, num_frames)


def _load_with_pyav(path: Path, image_size: int, num_frames: int) -> Tensor:
    try:
        import av
    except ImportError:
        raise VitlabError(f"{path.suffix} needs PyAV (pip install av); frame folders and GIFs work without it") \
            from None
    try:
        with av.open(str(path)) as container:
            decoded = [f.to_image() for f in container.decode(video=0)]
    except Exception as e:   # PyAV's own error classes, as one line
        raise VitlabError(f"unreadable video ({type(e).__name__}: {str(e)[:80]})") from None
    if not decoded:
        raise VitlabError("video holds no frame")
    return torch.stack([_pil_to_uint8(decoded[i].convert("RGB"), image_size) for i in _even(len(decoded),
                                                                                           num_frames)])


def _pil_to_uint8(image: object, image_size: int) -> Tensor:
    from PIL import Image

    image = image.resize((image_size, image_size), Image.BILINEAR)                # type: ignore[attr-defined]
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def _even(count: int, num_frames: int) -> list[int]:
    """num_frames indices spread evenly over count frames (repeats when the video is shorter)."""
    return [min(count - 1, int((i + 0.5) * count / num_frames)) for i in range(num_frames)]
