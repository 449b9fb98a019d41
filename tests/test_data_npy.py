""".npy clip arrays: one loader for `data.url` and `nfp predict --input`, the same one-line refusals from both,
and data.layout (TNHW as mnist_test_seq.npy, or NTHW) given or detected."""

import io
import json
from pathlib import Path

import numpy as np
import pytest

from nfp.cli import main
from nfp.config import load_config
from nfp.data import moving_mnist as mm
from nfp.data.manifest import load_manifest
from nfp.data.pipeline import read_clips
from nfp.data.prepare import prepare
from nfp.errors import DataError
from nfp.inference.predict import load_input

FRAMES, SIZE, CLIPS = 6, 16, 24


@pytest.fixture(scope="module")
def clips() -> np.ndarray:
    """Moving MNIST clips (clips, time, H, W) uint8, at the tiny config's shape."""
    bank = mm.load_digit_bank("sklearn", 8)
    return mm.generate(CLIPS, seed=3, bank=bank, frames=FRAMES, image_size=SIZE)


def download_overrides(tiny_overrides, path, *more) -> list[str]:
    return [*tiny_overrides, "data.source=download", f"data.url={path}", *more]


def npy_bytes(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _npz(path, clips):
    with open(path, "wb") as f:  # np.savez would append .npz to the name
        np.savez(f, clips=clips.transpose(1, 0, 2, 3))


def _objects(path, clips):
    np.save(path, np.array([clips[0], "a caption"], object), allow_pickle=True)  # a pickle inside


BAD_FILES = {
    "empty": (lambda p, c: p.write_bytes(b""), r"empty \(0 bytes\), expected a .npy of \(time, clips, H, W\) uint8"),
    "npz": (_npz, r"a .npz archive \(np.savez\), expected a .npy .*: save the one array with np.save"),
    "cut-in-data": (
        lambda p, c: p.write_bytes(npy_bytes(c.transpose(1, 0, 2, 3))[:5000]),
        r"not a complete .npy file \(5000 bytes, its header announces 36992 for shape \(6, 24, 16, 16\) uint8",
    ),
    "cut-in-header": (lambda p, c: p.write_bytes(npy_bytes(c)[:40]), r"not a complete .npy file \(its header"),
    "text": (lambda p, c: p.write_text("clips, I promise\n"), r"not a .npy file \(no NumPy header\)"),
    "objects": (_objects, r"holds Python objects \(dtype object\)"),
    "float": (  # Moving MNIST's file is uint8; nfp predict --input reads floats in [0, 1] as the arrays source does
        lambda p, c: np.save(p, c.transpose(1, 0, 2, 3).astype(np.float32)),
        {
            "data.url": r"got shape \(6, 24, 16, 16\) dtype float32, expected a .npy of \(time, clips, H, W\) uint8",
            "--input": r"float values [\d.]+\.\.[\d.]+ in clip 0, expected floats in \[0, 1\] \(or uint8 0–255\)",
        },
    ),
    "3-d": (lambda p, c: np.save(p, c[0]), r"got shape \(6, 16, 16\) dtype uint8, expected a .npy of"),
    "one-frame": (lambda p, c: np.save(p, c[:, :1].transpose(1, 0, 2, 3)), r"has 1 frame\(s\) per clip"),
    "directory": (lambda p, c: p.mkdir(), r"is a directory, expected a .npy"),
}


@pytest.mark.parametrize("bad", list(BAD_FILES))
@pytest.mark.parametrize("entry", ["data.url", "--input"])
def test_a_bad_npy_is_the_same_one_line_refusal_from_data_url_and_predict_input(
    bad, entry, tiny_overrides, clips, tmp_path, capsys
):
    make, message = BAD_FILES[bad]
    message = message[entry] if isinstance(message, dict) else message
    path = tmp_path / "clips.npy"
    make(path, clips)
    if entry == "data.url":
        argv = ["prepare", *download_overrides(tiny_overrides, path)]
    else:
        argv = ["predict", "--model", str(tmp_path / "unused.keras"), "--input", str(path), *tiny_overrides]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {entry} {path}: "), err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()  # no data dir, no outputs


# --------------------------------------------------------------------------- data.layout
def test_the_same_clips_in_either_layout_prepare_the_same_shards(tiny_overrides, clips, tmp_path):
    np.save(tmp_path / "tnhw.npy", clips.transpose(1, 0, 2, 3))
    np.save(tmp_path / "nthw.npy", clips)
    made = {}
    for name, layout in (("tnhw", "TNHW"), ("nthw", "NTHW")):
        more = [f"data.dir={tmp_path}/{name}", f"data.layout={layout}"]
        cfg = load_config(None, download_overrides(tiny_overrides, tmp_path / f"{name}.npy", *more)).data
        manifest = prepare(cfg, progress=False)
        assert manifest.content["source"]["layout"] == layout and manifest.content["config"]["layout"] == layout
        made[name] = np.concatenate([read_clips(cfg, load_manifest(cfg.dir), s, CLIPS) for s in manifest.splits])
        assert sorted(c.tobytes() for c in made[name]) == sorted(c.tobytes() for c in clips)  # whole clips, in time
    np.testing.assert_array_equal(made["tnhw"], made["nthw"])


@pytest.mark.parametrize("stored, assumed", [("NTHW", "TNHW"), ("TNHW", "NTHW")])
def test_an_array_in_the_other_layout_is_refused_naming_the_file_both_layouts_and_the_key(
    stored, assumed, tiny_overrides, clips, tmp_path, capsys
):
    path = tmp_path / "clips.npy"
    np.save(path, clips if stored == "NTHW" else clips.transpose(1, 0, 2, 3))
    assert main(["prepare", *download_overrides(tiny_overrides, path, f"data.layout={assumed}")]) == 2
    err = capsys.readouterr().err
    names = {"TNHW": "(time, clips, H, W)", "NTHW": "(clips, time, H, W)"}
    assert err.startswith(
        f"error: data.url {path}: looks like {stored} {names[stored]}, not data.layout {assumed} {names[assumed]}: "
    ), err
    assert err.endswith(f"; set data.layout={stored}\n") and err.count("\n") == 1, err
    assert not (tmp_path / "data").exists()  # refused before the data dir is made


def test_a_clip_major_array_is_refused_by_predict_input_unless_data_layout_says_so(tiny_overrides, clips, tmp_path):
    path = tmp_path / "clips.npy"
    np.save(path, clips)  # (clips, time, H, W)
    cfg = load_config(None, tiny_overrides)
    with pytest.raises(DataError, match=r"^--input .*clips.npy: looks like NTHW .*; set data.layout=NTHW$"):
        load_input(cfg, f"{path}:5")
    clip, tag = load_input(load_config(None, [*tiny_overrides, "data.layout=NTHW"]), f"{path}:5")
    np.testing.assert_array_equal(clip, clips[5][..., None])
    assert tag == "clips_5"


@pytest.mark.parametrize(
    "array",
    [
        np.random.default_rng(0).integers(0, 256, (FRAMES, CLIPS, SIZE, SIZE), dtype=np.uint8),  # noise: no axis wins
        np.full((FRAMES, CLIPS, SIZE, SIZE), 7, np.uint8),  # stills
        np.zeros((FRAMES, 1, SIZE, SIZE), np.uint8),  # one clip: nothing to compare (predict --save-npy's output)
    ],
    ids=["noise", "stills", "one-clip"],
)
@pytest.mark.parametrize("layout", ["TNHW", "NTHW"])
def test_arrays_without_a_telling_axis_are_not_refused_in_either_layout(tiny_overrides, tmp_path, array, layout):
    path = tmp_path / "clips.npy"
    np.save(path, array if layout == "TNHW" else array.transpose(1, 0, 2, 3))
    clip, _ = load_input(load_config(None, [*tiny_overrides, f"data.layout={layout}"]), str(path))
    np.testing.assert_array_equal(clip, array[:, 0, ..., None])


def test_a_dir_prepared_before_data_layout_existed_is_reused_not_refused(tiny_overrides, clips, tmp_path):
    path = tmp_path / "clips.npy"
    np.save(path, clips.transpose(1, 0, 2, 3))
    cfg = load_config(None, download_overrides(tiny_overrides, path)).data
    first = prepare(cfg, progress=False).content
    manifest = tmp_path / "data" / "manifest.json"
    old = json.loads(manifest.read_text())
    del old["config"]["layout"], old["source"]["layout"]  # as an earlier nfp wrote it
    manifest.write_text(json.dumps(old))
    again = prepare(cfg, progress=False).content
    assert again["id"] == first["id"] and again["config"]["layout"] == "TNHW"
    assert Path(cfg.dir, "manifest.json").is_file()
