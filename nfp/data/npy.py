"""The one reader of clip arrays in .npy files, for `data.url` (prepare) and `nfp predict --input` alike.

It checks what the file is (missing, a directory, empty, a .npz archive, not NumPy, cut short, pickled objects),
what it holds (4-D uint8), and whether its first two axes are the ones `data.layout` says: TNHW (time, clips, H, W),
the layout of mnist_test_seq.npy, or NTHW (clips, time, H, W). Every error is one line starting with the caller's
label ("data.url URL", "--input PATH"). Arrays stay memory-mapped: mnist_test_seq.npy is 819 MB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nfp.errors import DataError

LAYOUTS = {"TNHW": "(time, clips, H, W)", "NTHW": "(clips, time, H, W)"}

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


def open_array(path: Path, label: str, layout: str = "TNHW") -> np.ndarray:
    """The .npy at path memory-mapped, once it is a whole file of a 4-D uint8 array (any layout); DataError else."""
    check_file(path, label)
    size = path.stat().st_size
    expected = f"expected a .npy of {LAYOUTS[layout]} uint8 (data.layout {layout})"
    if size == 0:
        raise DataError(f"{label}: empty (0 bytes), {expected}")
    with open(path, "rb") as f:
        magic = f.read(6)
        if magic.startswith(b"PK\x03\x04"):
            raise DataError(f"{label}: a .npz archive (np.savez), {expected}: save the one array with np.save")
        if magic != b"\x93NUMPY":
            raise DataError(f"{label}: not a .npy file (no NumPy header), {expected}")
        f.seek(0)
        try:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(f)
        except (ValueError, EOFError, OSError) as err:
            raise DataError(f"{label}: not a complete .npy file (its header is cut short or damaged: {err})") from None
        offset = f.tell()
    if dtype.hasobject:
        raise DataError(f"{label}: holds Python objects (dtype {dtype}), {expected}")
    announced = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < announced:
        raise DataError(
            f"{label}: not a complete .npy file ({size} bytes, its header announces {announced} for shape "
            f"{tuple(shape)} {dtype}: cut short?)"
        )
    if len(shape) != 4 or dtype != np.uint8:
        raise DataError(f"{label}: got shape {tuple(shape)} dtype {dtype}, {expected} like mnist_test_seq.npy")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{label}: not a complete .npy file ({err})") from None


def open_clips(path: Path, layout: str, label: str) -> np.ndarray:
    """The clips of a .npy in `layout`, as a memory-mapped (time, clips, H, W) uint8 view; DataError naming `label`
    when the file is no such array, has fewer than 2 frames per clip, or looks laid out the other way."""
    array = open_array(path, label, layout)
    clips = array if layout == "TNHW" else array.transpose(1, 0, 2, 3)
    if clips.shape[0] < 2:
        raise DataError(
            f"{label}: shape {array.shape} has {clips.shape[0]} frame(s) per clip in data.layout {layout} "
            f"{LAYOUTS[layout]}, expected >= 2"
        )
    check_layout(clips, layout, label)
    return clips


def check_layout(clips: np.ndarray, layout: str, label: str) -> None:
    """DataError when (time, clips, H, W) `clips` (read as `layout`) look like the other layout: neighbouring frames
    of one "clip" less alike than the same frame of neighbouring "clips". Reads 64 subsampled frames."""
    t, n = min(_SAMPLE, clips.shape[0]), min(_SAMPLE, clips.shape[1])
    if t < 2 or n < 2:
        return  # one clip or one frame: nothing to compare
    step_h, step_w = max(1, clips.shape[2] // _PIXELS), max(1, clips.shape[3] // _PIXELS)
    block = np.asarray(clips[:t, :n, ::step_h, ::step_w], dtype=np.float32)
    along_time = float(np.abs(np.diff(block, axis=0)).mean())
    along_clips = float(np.abs(np.diff(block, axis=1)).mean())
    if along_time > _MISMATCH * along_clips and along_time - along_clips > 1.0:
        other = next(k for k in LAYOUTS if k != layout)
        raise DataError(
            f"{label}: looks like {other} {LAYOUTS[other]}, not data.layout {layout} {LAYOUTS[layout]}: "
            f"consecutive frames of a clip differ more (mean |Δ| {along_time:.1f}) than the same frame of "
            f"different clips ({along_clips:.1f}); set data.layout={other}"
        )
