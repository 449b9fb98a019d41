"""The one reader of clip arrays in .npy/.npz files, for `data.url` (prepare), `data.source: arrays` and `nfp predict
--input` alike.

It checks what the file is (missing, a directory, empty, not NumPy, cut short, pickled objects, a compressed .npz),
what it holds (uint8, or floats in [0, 1] where the caller takes them, of as many axes as `data.layout` names), and
whether the time and clip axes are the ones `data.layout` says: TNHW (time, clips, H, W), the layout of
mnist_test_seq.npy, NTHW (clips, time, H, W), or either with a channel axis C (1 or 3) last. Every error is one line
starting with the caller's label ("data.url URL", "--input PATH"). Arrays stay memory-mapped, .npz members too
(np.savez stores them uncompressed): mnist_test_seq.npy is 819 MB.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from nfp.errors import DataError

LAYOUTS = {
    "TNHW": "(time, clips, H, W)",
    "NTHW": "(clips, time, H, W)",
    "TNHWC": "(time, clips, H, W, C)",
    "NTHWC": "(clips, time, H, W, C)",
}

# A layout check on a corner of the array: 8 frames of 8 clips, frames subsampled to ~64×64 pixels. Frames next
# to each other in one clip are far more alike than the same frame of two clips (Moving MNIST: mean |Δ| ≈ 12 vs
# ≈ 24 on 0..255); an array whose "time" neighbours differ this much more than its "clip" neighbours is the
# other way round.
_SAMPLE = 8
_PIXELS = 64
_MISMATCH = 1.25  # the other layout must fit this much better (and by > 1 grey level): noise and stills pass


def check_file(path: Path, label: str, expected: str = "expected a .npy file") -> None:
    """DataError unless path is an existing regular file."""
    if path.is_dir():
        raise DataError(f"{label}: is a directory, {expected}")
    if not path.is_file():
        raise DataError(f"{label}: not found, {expected}")


def _expected(layout: str, floats: bool) -> str:
    kind = "uint8 (or floats in [0, 1])" if floats else "uint8"
    return f"expected a .npy of {LAYOUTS[layout]} {kind} (data.layout {layout})"


def open_array(path: Path, label: str, layout: str = "TNHW", *, floats: bool = False) -> np.ndarray:
    """The .npy at path memory-mapped, once it is a whole file of an array of `layout`'s axes, uint8 (or float where
    `floats`); DataError else."""
    check_file(path, label)
    expected = _expected(layout, floats)
    if path.stat().st_size == 0:
        raise DataError(f"{label}: empty (0 bytes), {expected}")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"PK\x03\x04"):
        raise DataError(f"{label}: a .npz archive (np.savez), {expected}: save the one array with np.save")
    return _mapped(path, 0, label, layout, floats, path.stat().st_size)


def open_arrays(path: Path, label: str, layout: str) -> dict[str, np.ndarray]:
    """{name: memory-mapped array} of a .npy (name "") or of each member of an .npz (np.savez: stored, so mapped)
    holding `layout` arrays of uint8 or floats; DataError naming the file (and member)."""
    check_file(path, label, "expected a .npy or .npz file")
    if path.stat().st_size == 0:
        raise DataError(f"{label}: empty (0 bytes), {_expected(layout, True)}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        return {"": open_array(path, label, layout, floats=True)}
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise DataError(f"{label}: not a complete .npz archive ({err})") from None
    out = {}
    with archive, open(path, "rb") as f:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            where = f"{label} [{name}]"
            if info.compress_type != zipfile.ZIP_STORED:
                raise DataError(f"{where}: compressed (np.savez_compressed) cannot be memory-mapped; save the file with "
                                "np.savez or np.save")  # fmt: skip
            f.seek(info.header_offset + 26)  # the local header: its name and extra field lengths, then the member
            lengths = np.frombuffer(f.read(4), "<u2")
            start = info.header_offset + 30 + int(lengths[0]) + int(lengths[1])
            out[name] = _mapped(path, start, where, layout, True, start + info.file_size)
    if not out:
        raise DataError(f"{label}: an empty .npz archive, {_expected(layout, True)}")
    return out


def _mapped(path: Path, start: int, label: str, layout: str, floats: bool, end: int) -> np.ndarray:
    """The .npy data starting at byte `start` of path (a file, or an .npz member ending at `end`), memory-mapped."""
    expected = _expected(layout, floats)
    with open(path, "rb") as f:
        f.seek(start)
        if f.read(6) != b"\x93NUMPY":
            raise DataError(f"{label}: not a .npy file (no NumPy header), {expected}")
        f.seek(start)
        try:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
        except (ValueError, EOFError, OSError) as err:
            raise DataError(f"{label}: not a complete .npy file (its header is cut short or damaged: {err})") from None
        offset = f.tell()
    if dtype.hasobject:
        raise DataError(f"{label}: holds Python objects (dtype {dtype}), {expected}")
    announced = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if end < announced:
        raise DataError(
            f"{label}: not a complete .npy file ({end - start} bytes, its header announces {announced - start} for "
            f"shape {tuple(shape)} {dtype}: cut short?)"
        )
    ok_dtype = dtype == np.uint8 or (floats and dtype.kind == "f")
    if len(shape) != len(layout) or not ok_dtype:
        like = " like mnist_test_seq.npy" if layout == "TNHW" else ""
        raise DataError(f"{label}: got shape {tuple(shape)} dtype {dtype}, {expected}{like}")
    if len(layout) == 5 and shape[-1] not in (1, 3):
        raise DataError(f"{label}: shape {tuple(shape)} has {shape[-1]} channels (last axis of data.layout {layout}), "
                        "expected 1 or 3")  # fmt: skip
    if not all(shape):
        raise DataError(f"{label}: shape {tuple(shape)} holds no frames, {expected}")
    try:
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape), order="F" if fortran else "C")
    except (ValueError, OSError) as err:
        raise DataError(f"{label}: not a complete .npy file ({err})") from None


def as_time_major(array: np.ndarray, layout: str) -> np.ndarray:
    """A `layout` array as a (time, clips, H, W, C) view (grey layouts gain C = 1)."""
    clips = array if layout.startswith("TN") else array.swapaxes(0, 1)
    return clips if len(layout) == 5 else clips[..., None]


def open_clips(path: Path, layout: str, label: str, *, floats: bool = False) -> np.ndarray:
    """The clips of a .npy in `layout`, as a memory-mapped (time, clips, H, W, C) uint8 (or, where `floats`, float)
    view; DataError naming `label` when the file is no such array, has fewer than 2 frames per clip, or looks laid out
    the other way."""
    array = open_array(path, label, layout, floats=floats)
    clips = as_time_major(array, layout)
    if clips.shape[0] < 2:
        raise DataError(
            f"{label}: shape {array.shape} has {clips.shape[0]} frame(s) per clip in data.layout {layout} "
            f"{LAYOUTS[layout]}, expected >= 2"
        )
    check_layout(clips, layout, label)
    return clips


def check_layout(clips: np.ndarray, layout: str, label: str) -> None:
    """DataError when (time, clips, H, W, C) `clips` (read as `layout`) look like the other layout: neighbouring frames
    of one "clip" less alike than the same frame of neighbouring "clips". Reads 64 subsampled frames."""
    t, n = min(_SAMPLE, clips.shape[0]), min(_SAMPLE, clips.shape[1])
    if t < 2 or n < 2:
        return  # one clip or one frame: nothing to compare
    step_h, step_w = max(1, clips.shape[2] // _PIXELS), max(1, clips.shape[3] // _PIXELS)
    block = np.asarray(clips[:t, :n, ::step_h, ::step_w], dtype=np.float32) * (255.0 if clips.dtype.kind == "f" else 1)
    along_time = float(np.abs(np.diff(block, axis=0)).mean())
    along_clips = float(np.abs(np.diff(block, axis=1)).mean())
    if along_time > _MISMATCH * along_clips and along_time - along_clips > 1.0:
        other = ("NT" if layout.startswith("TN") else "TN") + layout[2:]
        raise DataError(
            f"{label}: looks like {other} {LAYOUTS[other]}, not data.layout {layout} {LAYOUTS[layout]}: "
            f"consecutive frames of a clip differ more (mean |Δ| {along_time:.1f}) than the same frame of "
            f"different clips ({along_clips:.1f}); set data.layout={other}"
        )
