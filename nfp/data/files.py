"""Your own files → clips: data.path listed, each video indexed, videos split (never their clips), clips decoded in a
pool of processes.

A *video* is what every clip cut from it shares a split with: a video file (`video`), a folder of frames
(`frames`), or one clip-axis entry of an array (`arrays`). Clips of `data.frames` frames start every
`data.clip_stride` kept frames, keeping every `data.frame_step`-th frame. Indexing (frame counts, sizes) reads
headers and packets, not pixels; decoding happens shard by shard, in pieces of a few clips per process, so memory is
bounded by a shard whatever the number of files, and the pieces come back in order: the bytes are the same for any
`data.prepare_processes`.

Importable without TensorFlow (workers import only this, numpy, PyAV, Pillow and fsspec).
"""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import os
import posixpath
import re
import warnings
from collections.abc import Iterator

import numpy as np

from nfp import storage
from nfp.data import images, npy
from nfp.errors import DataError, first_line

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy", ".npz")
_SUFFIXES = {"video": VIDEO_SUFFIXES, "frames": IMAGE_SUFFIXES, "arrays": ARRAY_SUFFIXES}
_PIECE_BYTES = 16 << 20  # decoded clips one task hands back: the pool's memory is this per process, twice
_SEEK_GAP = 48  # frames: a longer gap to the next wanted frame is sought, not decoded through


def is_video(spec: str) -> bool:
    return spec.lower().endswith(VIDEO_SUFFIXES)


def is_clip_file(spec: str) -> bool:
    """A video file, or a local folder holding PNG/JPEG frames: what `first_clip` reads."""
    return is_video(spec) or (os.path.isdir(spec) and any(n.lower().endswith(IMAGE_SUFFIXES) for n in os.listdir(spec)))


# --------------------------------------------------------------------------- listing
@dataclasses.dataclass(frozen=True)
class Entry:
    """A file (video, array) or a folder of frames found under data.path: its URL and its name under data.path (what
    split patterns match)."""

    url: str
    name: str


def natural_key(text: str) -> list:
    """f2 before f10: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def list_entries(data_cfg) -> list[Entry]:
    """Every file (or frame folder) of data.path, sorted by name; DataError naming the path that has none."""
    found: dict[str, Entry] = {}
    root_of: dict[str, str] = {}
    for spec in data_cfg.path:
        entries = _list_one(spec, data_cfg.source)
        if not entries:
            kinds = "folders of " + "/".join(IMAGE_SUFFIXES) + " frames" if data_cfg.source == "frames" else (
                "/".join(_SUFFIXES[data_cfg.source]) + " files")  # fmt: skip
            raise DataError(f"data.path {spec}: {_what_is_there(spec, data_cfg.source)}, expected {kinds}")
        for entry in entries:
            found.setdefault(entry.url, entry)
            root_of.setdefault(entry.url, spec)
    # Two roots holding one name (a/cam1.mp4, b/cam1.mp4): each such file named after its root too, so the manifest,
    # split patterns and messages tell them apart.
    names = collections.Counter(e.name for e in found.values())
    for url, entry in found.items():
        if names[entry.name] > 1:
            root = posixpath.basename(root_of[url].rstrip("/").rstrip("*").rstrip("/")) or root_of[url]
            found[url] = dataclasses.replace(entry, name=f"{root}/{entry.name}")
    return sorted(found.values(), key=lambda e: (natural_key(e.name), e.url))


def _what_is_there(spec: str, source: str) -> str:
    """What data.path `spec` holds instead of what `source` reads: "a frame (a.png)", "3 .mp4 files", "not there"."""
    fs, path = storage.filesystem(spec)
    if not fs.exists(path) and not any(c in path for c in "*?["):
        return "not there"
    if fs.isfile(path):
        kind = "a frame" if path.lower().endswith(IMAGE_SUFFIXES) else "a file"
        return f"{kind} ({posixpath.basename(path)}), not a folder" if source == "frames" else f"{kind} of another kind"
    names = [
        posixpath.basename(p.rstrip("/")) for p in (fs.glob(path) if any(c in path for c in "*?[") else fs.ls(path))
    ]
    if not names:
        return "empty"
    suffixes = collections.Counter(posixpath.splitext(n)[1].lower() or "(none)" for n in names)
    return "holds " + ", ".join(f"{count} {suffix}" for suffix, count in suffixes.most_common(3)) + " file(s) only"


def _list_one(spec: str, source: str) -> list[Entry]:
    fs, path = storage.filesystem(spec)
    protocol = spec.partition("://")[0] + "://" if "://" in spec else ""
    url = lambda p: (protocol + p) if protocol and not p.startswith(protocol) else p
    if fs.isfile(path):
        return [Entry(spec, posixpath.basename(path.rstrip("/")))] if source != "frames" else []
    if any(c in path for c in "*?["):
        base = path[: min(path.find(c) for c in "*?[" if c in path)].rpartition("/")[0]
        matched = sorted(fs.glob(path))
    elif fs.isdir(path):
        base = path.rstrip("/")
        matched = None
    else:
        return []
    if source == "frames":
        folders = [p for p in matched if fs.isdir(p)] if matched is not None else [base]
        return [Entry(url(f), _relative(f, base)) for f in _frame_folders(fs, folders)]
    files = matched if matched is not None else fs.find(base)
    return [Entry(url(p), _relative(p, base)) for p in files if p.lower().endswith(_SUFFIXES[source]) and fs.isfile(p)]


def _frame_folders(fs, roots: list[str]) -> list[str]:
    """The folders under roots that hold frames directly (a folder of frames, or a folder of such folders)."""
    out = []
    for root in roots:
        for folder, _, names in fs.walk(root):
            if any(n.lower().endswith(IMAGE_SUFFIXES) for n in names):
                out.append(folder.rstrip("/"))
    return out


def _relative(path: str, base: str) -> str:
    rel = path[len(base) :].lstrip("/") if base and path.startswith(base) else path
    return rel or posixpath.basename(path.rstrip("/"))


# --------------------------------------------------------------------------- videos
@dataclasses.dataclass(frozen=True)
class Video:
    """One video: where it is, its name, how many frames it has, and what decoding it needs (pts of a video file's
    frames, a folder's frame files, an array's file, member and clip index)."""

    kind: str
    url: str
    name: str
    frames: int
    detail: tuple = ()

    def clip_starts(self, frames: int, stride: int, step: int) -> list[int]:
        """The first (original) frame of every clip: `frames` frames `step` apart, a clip every `stride` kept."""
        kept = -(-self.frames // step)
        return [i * step for i in range(0, kept - frames + 1, stride)]


@dataclasses.dataclass
class Skipped:
    name: str
    why: str


def index(data_cfg, entries: list[Entry], pool, progress: bool) -> tuple[list[Video], list[Skipped]]:
    """Every video of the entries with its frame count, checked it can be cut into one clip at least; a bad file is
    one DataError naming it (data.on_bad_file: error) or listed as skipped (skip)."""
    from tqdm.auto import tqdm

    videos, skipped, converted = [], [], {}  # converted: {image mode: its first frame}, said once per mode
    span = (data_cfg.frames - 1) * data_cfg.frame_step + 1
    probe = [(data_cfg.source, e.url, e.name, data_cfg.layout) for e in entries]
    results = pool.map(_probe, probe) if pool else map(_probe, probe)
    with tqdm(total=len(entries), unit="file", desc=f"index {len(entries)} file(s)", disable=not progress) as bar:
        for entry, (found, why, note) in zip(entries, results):
            bar.update(1)
            if note:
                converted.setdefault(*note)
            longest = max((v.frames for v in found), default=0)
            found = [v for v in found if v.frames >= span]
            if not why and not found:
                why = (
                    f"shorter than one clip: {longest} frame(s), a clip spans {span} "
                    f"(data.frames {data_cfg.frames}, data.frame_step {data_cfg.frame_step})"
                )
            if why:
                label = _label(data_cfg.source, entry.url)
                why = why.removeprefix(f"{label}: ")  # the array loader names the file itself: once is enough
                if data_cfg.on_bad_file == "error":
                    raise DataError(f"{label}: {why} (data.on_bad_file=skip to leave it out)")
                warnings.warn(f"{label}: skipped, {why}", stacklevel=2)
                skipped.append(Skipped(entry.name, why))
                continue
            videos.extend(found)
    for mode, first in sorted(converted.items()):
        print(f"prepare: {mode} frames are {images.what_becomes_of(mode)} (the first: {first})", flush=True)
    if not videos:
        raise DataError(f"data.path: none of the {len(entries)} file(s) could be cut into a clip (see the warnings)")
    return videos, skipped


def _label(source: str, url: str) -> str:
    return {"video": "video", "frames": "frame folder", "arrays": "array file"}[source] + f" {url}"


def _probe(task) -> tuple[list[Video], str | None, tuple[str, str] | None]:
    """(videos, why not, (image mode, frame) of a frame not of 8-bit L or RGB) of one entry, in a worker."""
    kind, url, name, layout = task
    try:
        if kind == "video":
            return [_probe_video(url, name)], None, None
        if kind == "frames":
            video, note = _probe_folder(url, name)
            return [video], None, note
        return _probe_arrays(url, name, layout), None, None
    except DataError as err:
        return [], str(err), None


def _open_video(url: str):
    import av

    source = str(storage.local_path(url)) if storage.is_local(url) else storage.filesystem(url)[0].open(
        storage.filesystem(url)[1], "rb")  # fmt: skip
    try:
        return av.open(source)
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise DataError(f"cannot be opened as a video ({first_line(err)})") from None


def _probe_video(url: str, name: str) -> Video:
    """Frame count and each frame's pts, from the packets (no pixels decoded)."""
    import av

    with _open_video(url) as container:
        if not container.streams.video:
            raise DataError("has no video stream")
        stream = container.streams.video[0]
        pts = []
        try:
            for packet in container.demux(stream):
                if packet.size:
                    pts.append(packet.pts)
        except av.error.FFmpegError as err:
            raise DataError(f"cut short or damaged after {len(pts)} frame(s) ({first_line(err)})") from None
        # An MP4/MOV's sample table counts its frames exactly: a file cut short (a copy that stopped, a faststart file
        # whose index comes first) demuxes fewer packets, without an error, and would give fewer clips silently.
        declared = stream.frames if "mp4" in container.format.name or "mov" in container.format.name else 0
    if declared and len(pts) < declared:
        raise DataError(f"cut short: its header declares {declared} frames, {len(pts)} are there")
    if not pts:
        raise DataError("has no frames")
    ordered = tuple(sorted(pts)) if None not in pts else ()  # no timestamps: decoded in order, never sought
    return Video("video", url, name, len(pts), ordered)


def _probe_folder(url: str, name: str) -> tuple[Video, str | None]:
    """A folder's frame files in natural order, each checked to be an image of the first one's size."""
    from PIL import Image, UnidentifiedImageError

    fs, path = storage.filesystem(url)
    names = sorted(
        (n for n in fs.ls(path, detail=False) if fs.isfile(n)), key=lambda n: natural_key(posixpath.basename(n))
    )
    size, converted = None, None
    frames = []
    for i, file in enumerate(names):
        base = posixpath.basename(file)
        if not base.lower().endswith(IMAGE_SUFFIXES):
            if base.startswith("."):
                continue
            raise DataError(f"frame {i} ({base}): not a PNG or JPEG file")
        try:
            with fs.open(file, "rb") as f, Image.open(f) as image:
                image_size, mode = image.size, image.mode
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"frame {i} ({base}): not a readable image ({first_line(err)})") from None
        if size is None:
            size = image_size
        elif image_size != size:
            raise DataError(f"frame {i} ({base}): {image_size[0]}×{image_size[1]}, the folder's first frame is "
                            f"{size[0]}×{size[1]}; expected frames of one size")  # fmt: skip
        if mode not in ("L", "RGB") and converted is None:
            converted = (mode, f"{url}/{base}")
        frames.append(file if "://" not in url else url.partition("://")[0] + "://" + file.lstrip("/"))
    if not frames:
        raise DataError("holds no frames")
    return Video("frames", url, name, len(frames), tuple(frames)), converted


def _probe_arrays(url: str, name: str, layout: str) -> list[Video]:
    """One video per clip-axis entry of each array in the file."""
    arrays = npy.open_arrays(storage.local_path(url), _label("arrays", url), layout)
    out = []
    for member, array in arrays.items():
        clips = npy.as_time_major(array, layout)
        label = _label("arrays", url) + (f" [{member}]" if member else "")
        npy.check_layout(clips, layout, label)  # axes swapped?
        if clips.dtype != np.uint8:
            check_float_values(clips, label)  # here, while indexing: data.on_bad_file=skip can leave the file out
        where = f"{name}[{member}]" if member else name
        out += [Video("arrays", url, f"{where}#{i}", clips.shape[0], (member, i)) for i in range(clips.shape[1])]
    return out


def check_float_values(clips: np.ndarray, label: str, first_clip: int = 0) -> None:
    """DataError naming the first clip of float `clips` (T, N, H, W, C) with a NaN or a value outside [0, 1]; read a
    few clips at a time (a memory-mapped file stays mapped)."""
    for start in range(0, clips.shape[1], 16):
        part = np.asarray(clips[:, start : start + 16])
        for i in range(part.shape[1]):
            clip = part[:, i]
            if np.isnan(clip).any():
                raise DataError(f"{label}: NaN in clip {first_clip + start + i}, expected floats in [0, 1] "
                                "(or uint8 0–255)")  # fmt: skip
            low, high = float(clip.min()), float(clip.max())
            if not (0.0 <= low and high <= 1.0):
                raise DataError(f"{label}: float values {low:g}..{high:g} in clip {first_clip + start + i}, expected "
                                "floats in [0, 1] (or uint8 0–255)")  # fmt: skip


# --------------------------------------------------------------------------- splitting
def split_videos(data_cfg, videos: list[Video]) -> dict[str, list[Video]]:
    """{split: videos}: by name patterns (data.split given as lists; the rest train), else the seeded order of the
    videos cut by data.split's fractions or counts of videos."""
    from nfp.data.moving_mnist import SPLITS
    from nfp.data.plan import split_counts

    patterns = data_cfg.split.patterns()
    if patterns is not None:
        out = {s: [] for s in SPLITS}
        for video in videos:
            file = video.name.partition("#")[0]
            hits = [s for s in SPLITS if any(fnmatch.fnmatchcase(file, p) for p in patterns[s])]
            if len(hits) > 1:
                raise DataError(f"data.split: {file} matches the patterns of {' and '.join(hits)}, expected one split")
            if not hits and patterns["train"]:
                raise DataError(f"data.split: {file} matches none of the patterns of train, val or test, expected one")
            out[hits[0] if hits else "train"].append(video)
        if not out["train"]:
            raise DataError("data.split: the patterns leave no training videos")
        names = [video.name.partition("#")[0] for video in videos]
        for split in SPLITS:
            for pattern in patterns[split]:  # a typo would leave its split silently smaller, or empty
                if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
                    empty = "" if out[split] else f": {split} is empty"
                    print(f"prepare: note: data.split.{split} pattern {pattern!r} matches no file{empty}", flush=True)
        return out
    try:
        counts = split_counts(data_cfg, len(videos))
    except DataError as err:
        raise DataError(f"{err} (videos: the clips of one video stay in one split)") from None
    order = np.random.default_rng(data_cfg.seed).permutation(len(videos))
    bounds = np.cumsum([0] + [counts[s] for s in SPLITS])
    return {s: [videos[j] for j in sorted(order[bounds[i] : bounds[i + 1]])] for i, s in enumerate(SPLITS)}


# --------------------------------------------------------------------------- decoding
@dataclasses.dataclass(frozen=True)
class Piece:
    """Clips of one video to decode in one task: their first frames, and how to make them."""

    video: Video
    starts: tuple[int, ...]
    frames: int
    step: int
    frame_hw: tuple[int, int]
    channels: int
    layout: str


class Reader:
    """(split, start, stop) → uint8 clips (n, T, H, W, C) of a split's clips in order, decoded in a pool."""

    def __init__(self, data_cfg, splits: dict[str, list[Video]], pool):
        d = data_cfg
        self.pool = pool
        self.clips: dict[str, list[tuple[Video, int]]] = {}
        stride = d.clip_stride or d.frames
        for split, videos in splits.items():
            self.clips[split] = [(v, s) for v in videos for s in v.clip_starts(d.frames, stride, d.frame_step)]
        self.recipe = dict(
            frames=d.frames, step=d.frame_step, frame_hw=d.frame_hw, channels=d.channels, layout=d.layout
        )
        self.per_piece = max(1, _PIECE_BYTES // (d.frames * d.channels * int(np.prod(d.frame_hw))))

    def counts(self) -> dict[str, int]:
        return {split: len(clips) for split, clips in self.clips.items()}

    def __call__(self, split: str, start: int, stop: int) -> np.ndarray:
        pieces = list(self._pieces(self.clips[split][start:stop]))
        decoded = self.pool.map(decode, pieces) if self.pool else map(decode, pieces)
        out = list(decoded)
        return np.concatenate(out) if out else np.zeros((0, self.recipe["frames"], *self.recipe["frame_hw"],
                                                         self.recipe["channels"]), np.uint8)  # fmt: skip

    def _pieces(self, clips: list[tuple[Video, int]]) -> Iterator[Piece]:
        run: list[int] = []
        for i, (video, start) in enumerate(clips):
            run.append(start)
            last = i + 1 == len(clips) or clips[i + 1][0] is not video
            if last or len(run) == self.per_piece:
                yield Piece(video, tuple(run), **self.recipe)
                run = []


def decode(piece: Piece) -> np.ndarray:
    """The piece's clips (n, T, H, W, C) uint8, in a worker."""
    needed = sorted({s + j * piece.step for s in piece.starts for j in range(piece.frames)})
    frames = {"video": _video_frames, "frames": _folder_frames, "arrays": _array_frames}[piece.video.kind](
        piece, needed
    )
    at = {index: k for k, index in enumerate(needed)}
    return np.stack([frames[[at[s + j * piece.step] for j in range(piece.frames)]] for s in piece.starts])


def _video_frames(piece: Piece, needed: list[int]) -> np.ndarray:
    import av

    video, (h, w) = piece.video, piece.frame_hw
    out = np.empty((len(needed), h, w, piece.channels), np.uint8)
    index = {p: i for i, p in enumerate(video.detail)} if video.detail else None
    label = _label("video", video.url)
    k, decoded, plan = 0, -1, None
    try:
        with _open_video(video.url) as container:
            stream = container.streams.video[0]
            while k < len(needed):
                if index is not None and needed[k] - decoded > _SEEK_GAP and needed[k] > 0:
                    container.seek(video.detail[needed[k]], stream=stream, backward=True, any_frame=False)
                    decoded = -1
                for position, frame in enumerate(container.decode(stream)):
                    decoded = index.get(frame.pts, -1) if index is not None else position
                    if decoded < needed[k]:
                        continue
                    if decoded > needed[k]:
                        raise DataError(f"{label}: frame {needed[k]} could not be decoded (the next was {decoded})")
                    if plan is None:
                        plan = images.cover(frame.height, frame.width, piece.frame_hw)
                    sh, sw, top, left = plan  # swscale resizes (area-averaging): 2.6× Pillow's speed on 240×320
                    rgb = frame.to_ndarray(width=sw, height=sh, format="rgb24", interpolation="AREA")
                    out[k] = images.to_channels(rgb[top : top + h, left : left + w], piece.channels)
                    k += 1
                    if k == len(needed) or (index is not None and needed[k] - decoded > _SEEK_GAP):
                        break
                else:
                    if k < len(needed):
                        raise DataError(f"{label}: ends before frame {needed[k]} (cut short?)")
    except av.error.FFmpegError as err:
        raise DataError(f"{label}: cannot decode frame {needed[k]} ({first_line(err)})") from None
    return out


def _folder_frames(piece: Piece, needed: list[int]) -> np.ndarray:
    from PIL import Image

    files = piece.video.detail
    out = np.empty((len(needed), *piece.frame_hw, piece.channels), np.uint8)
    for k, i in enumerate(needed):
        fs, path = storage.filesystem(files[i])
        try:
            with fs.open(path, "rb") as f, Image.open(f) as image:
                image.load()
                out[k] = images.fit(image, piece.frame_hw, piece.channels)
        except ValueError as err:  # pixels of a depth nfp cannot scale to 8 bits
            raise DataError(f"frame folder {piece.video.url}: frame {i} ({posixpath.basename(path)}): {err}") from None
        except OSError as err:
            raise DataError(f"frame folder {piece.video.url}: frame {i} ({posixpath.basename(path)}) cannot be decoded "
                            f"({first_line(err)})") from None  # fmt: skip
    return out


def _array_frames(piece: Piece, needed: list[int]) -> np.ndarray:
    video = piece.video
    member, clip = video.detail
    label = _label("arrays", video.url) + (f" [{member}]" if member else "")
    array = npy.open_arrays(storage.local_path(video.url), label, piece.layout)[member]
    frames = np.asarray(npy.as_time_major(array, piece.layout)[needed, clip])  # (n, H, W, C)
    if frames.dtype != np.uint8:
        check_float_values(frames[:, None], label, first_clip=clip)  # checked while indexing: a file changed since
        frames = np.rint(frames * 255.0).astype(np.uint8)
    if frames.shape[1:3] != tuple(piece.frame_hw):
        return np.stack([images.fit(f, piece.frame_hw, piece.channels) for f in frames])
    return images.to_channels(frames, piece.channels)


def first_clip(data_cfg, spec: str, frame_hw, channels: int, *, label: str) -> np.ndarray:
    """The first data.frames frames (every data.frame_step-th) of a video file or frame folder, (T, H, W, C) uint8:
    `nfp predict --input`."""
    kind = "video" if is_video(spec) else "frames"
    try:
        video = _probe_video(spec, spec) if kind == "video" else _probe_folder(spec, spec)[0]
    except DataError as err:
        raise DataError(f"{label}: {err}") from None
    frames = min(data_cfg.frames, -(-video.frames // data_cfg.frame_step))
    if frames < 2:
        raise DataError(f"{label}: has {video.frames} frame(s), expected >= 2")
    piece = Piece(video, (0,), frames, data_cfg.frame_step, tuple(frame_hw), channels, data_cfg.layout)
    return decode(piece)[0]
