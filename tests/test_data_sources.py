"""Your own data: video files (PyAV), frame folders (Pillow) and arrays, written here as real files, prepared into
shards — shapes, splits without leakage, byte-identical reruns for any pool size, one line per bad file."""

import hashlib
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from media import decode_all, moving_shapes, write_frames, write_video

from nfp.config import load_config
from nfp.data import files, images, pipeline
from nfp.data import prepare as prep
from nfp.errors import DataError


def _cfg(tmp_path, source: str, path, *extra, name="data"):
    return load_config(
        None,
        [
            f"data.source={source}",
            f"data.path={path}",
            "data.frames=6",
            "data.frame_size=[16, 24]",
            "data.channels=3",
            f"data.dir={tmp_path}/{name}",
            "data.prepare_processes=1",
            "evaluate.context_frames=3",
            "evaluate.predict_frames=3",
            *extra,
        ],
    ).data


def _shards(data_dir) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(data_dir).glob("*.tfrecord"))}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Six videos in the four containers, 30 frames of 48×64 each."""
    root = tmp_path_factory.mktemp("videos")
    for i, suffix in enumerate([".mp4", ".avi", ".mkv", ".webm", ".mp4", ".mp4"]):
        write_video(root / f"cam{i}{suffix}", moving_shapes(30, 48, 64, seed=i))
    return root


# --------------------------------------------------------------------------- pixels
def test_fit_keeps_the_aspect_by_a_centre_crop_and_converts_channels():
    wide = np.zeros((40, 100, 3), np.uint8)
    wide[:, 20:80] = 255  # around the centre 40 columns, all that a square crop keeps (and its filter reads)
    square = images.fit(wide, (20, 20), 3)
    assert square.shape == (20, 20, 3) and square.min() == 255
    grey = images.fit(np.full((8, 8, 3), [255, 0, 0], np.uint8), (8, 8), 1)
    assert grey.shape == (8, 8, 1) and grey[0, 0, 0] == 76  # Pillow's luma of pure red
    assert images.to_channels(np.full((2, 2, 1), 7, np.uint8), 3).tolist() == [[[7, 7, 7]] * 2] * 2


# --------------------------------------------------------------------------- video
def test_videos_become_clips_of_the_frame_size_and_no_video_is_in_two_splits(tmp_path, videos):
    cfg = _cfg(tmp_path, "video", videos, "data.split={train: 4, val: 1, test: 1}")
    manifest = prep.prepare(cfg, progress=False)
    assert manifest.clip_shape == (6, 16, 24, 3)
    split_of = manifest.content["source"]["videos"]
    names = [n for names in split_of.values() for n in names]
    assert sorted(names) == sorted(p.name for p in videos.iterdir()) and len(set(names)) == len(names)
    assert [len(split_of[s]) for s in ("train", "val", "test")] == [4, 1, 1]
    assert {s: manifest.count(s) for s in manifest.splits} == {"train": 20, "val": 5, "test": 5}  # 30 frames: 5 clips
    clips = pipeline.read_clips(cfg, manifest, "test", 5)
    (test_video,) = split_of["test"]
    np.testing.assert_array_equal(clips[1], decode_all(videos / test_video, (16, 24))[6:12])  # clip 2: frames 6..11
    # no clip leaks between splits: each val and test clip is its own video's, frames 6k..6k+5, and none is a train clip
    train = pipeline.read_clips(cfg, manifest, "train", 20)
    for split in ("val", "test"):
        (video,) = split_of[split]
        decoded = decode_all(videos / video, (16, 24))
        for k, clip in enumerate(pipeline.read_clips(cfg, manifest, split, 5)):
            np.testing.assert_array_equal(clip, decoded[6 * k : 6 * k + 6], err_msg=f"{split} clip {k}")
            assert not any(np.array_equal(clip, t) for t in train), f"{split} clip {k} is a train clip"
    # …and that is the picture Pillow makes of those frames (another resampler: within a few grey levels)
    pillow = np.stack([images.fit(f, (16, 24), 3) for f in decode_all(videos / test_video)[6:12]])
    assert np.abs(pillow.astype(int) - clips[1]).mean() < 6


def test_cover_scales_to_cover_the_frame_and_centres_the_crop():
    assert images.cover(240, 320, (128, 128)) == (128, 171, 0, 21)
    assert images.cover(480, 240, (64, 96)) == (192, 96, 64, 0)
    assert images.cover(64, 96, (64, 96)) == (64, 96, 0, 0)


@pytest.mark.parametrize("stride", [60, 61], ids=["starts on keyframes", "starts off the keyframe grid"])
def test_frame_step_and_gaps_seek_yet_give_the_frames_a_plain_decode_gives(tmp_path, stride):
    write_video(tmp_path / "long.mp4", moving_shapes(400, 32, 32, seed=3))  # a keyframe every 8 frames
    # every 2nd frame, a clip every 60 (61) kept frames: gaps of ~110 frames, past what is decoded through; with 61,
    # clips start at frames 122, 244, 366, between keyframes: a seek must land on the keyframe before, not after
    cfg = _cfg(tmp_path, "video", tmp_path / "long.mp4", "data.frame_step=2", f"data.clip_stride={stride}",
               "data.split={train: 1, val: 0, test: 0}")  # fmt: skip
    manifest = prep.prepare(cfg, progress=False)
    clips = pipeline.read_clips(cfg, manifest, "train", 100)
    reference = decode_all(tmp_path / "long.mp4", (16, 24))
    starts = list(range(0, 200 - 6 + 1, stride))
    assert len(clips) == len(starts) == 4
    for clip, start in zip(clips, starts):
        np.testing.assert_array_equal(clip, reference[[2 * (start + j) for j in range(6)]])


def test_pool_sizes_and_reruns_write_byte_identical_shards(tmp_path, videos):
    one = prep.prepare(_cfg(tmp_path, "video", videos, name="one"), progress=False)
    two = prep.prepare(_cfg(tmp_path, "video", videos, "data.prepare_processes=2", name="two"), progress=False)
    assert one.id == two.id and _shards(tmp_path / "one") == _shards(tmp_path / "two")
    again = prep.prepare(_cfg(tmp_path, "video", videos, name="one"), progress=False)  # a rerun reuses every shard
    assert again.id == one.id and _shards(tmp_path / "one") == _shards(tmp_path / "two")
    lost = sorted((tmp_path / "one").glob("train-*.tfrecord"))[0]
    lost.unlink()  # as a killed prepare leaves it: the rerun writes what is missing, the same bytes
    assert prep.prepare(_cfg(tmp_path, "video", videos, name="one"), progress=False).id == one.id
    assert _shards(tmp_path / "one") == _shards(tmp_path / "two")


def test_a_video_added_to_the_folder_is_a_new_data_set(tmp_path):
    folder = tmp_path / "videos"
    for i in range(2):
        write_video(folder / f"v{i}.mp4", moving_shapes(12, 16, 16, seed=i))
    cfg = _cfg(tmp_path, "video", folder, "data.split={train: 1.0, val: 0.0, test: 0.0}")
    first = prep.ensure_prepared(cfg)
    write_video(folder / "v2.mp4", moving_shapes(12, 16, 16, seed=2))
    with pytest.raises(
        DataError,
        match=r"holds another data set \(video from .*videos.*differing in the files under "
        r"data.path \(v2.mp4 added\)",
    ):  # what differs, not two equal descriptions
        prep.ensure_prepared(cfg)  # not silently the old shards, not silently replaced
    assert first.count("train") == 4


def test_a_data_sets_identity_follows_its_files_content_not_the_paths_spelling_or_times(tmp_path, monkeypatch):
    import os
    import shutil

    folder = tmp_path / "videos"
    for i in range(2):
        write_video(folder / f"v{i}.mp4", moving_shapes(12, 16, 16, seed=i))
    split = "data.split={train: 1.0, val: 0.0, test: 0.0}"
    first = prep.ensure_prepared(_cfg(tmp_path, "video", folder, split))
    monkeypatch.chdir(tmp_path)
    same = [
        _cfg(tmp_path, "video", f"{folder}/", split),  # a trailing slash
        _cfg(tmp_path, "video", "videos", split),  # the same folder, relative
        _cfg(tmp_path, "video", folder, split, "data.on_bad_file=skip"),  # nothing was skipped: no matter
    ]
    for cfg in same:
        assert prep.ensure_prepared(cfg).id == first.id
    os.utime(folder / "v0.mp4", (1e9, 1e9))  # touched: same bytes
    assert prep.ensure_prepared(same[0]).id == first.id
    shutil.copytree(folder, tmp_path / "copy")  # a copy (new times) is the same data set
    assert prep.ensure_prepared(_cfg(tmp_path, "video", tmp_path / "copy", split)).id == first.id

    data = bytearray((folder / "v1.mp4").read_bytes())
    data[len(data) // 2] ^= 0xFF  # rewritten in place: same name, same size
    (folder / "v1.mp4").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"differing in the files under data.path \(v1.mp4 rewritten\); use another"):
        prep.ensure_prepared(same[0])


def test_name_patterns_split_by_person_and_the_manifest_lists_where_each_went(tmp_path):
    folder = tmp_path / "kth"
    for person in (1, 2, 22, 23, 25):
        write_video(folder / f"person{person:02d}_walking.mp4", moving_shapes(12, 16, 16, seed=person))
    cfg = _cfg(tmp_path, "video", folder, 'data.split={test: ["person2[2-5]_*"], val: ["person02_*"]}')
    manifest = prep.prepare(cfg, progress=False)
    assert manifest.content["source"]["videos"] == {
        "train": ["person01_walking.mp4"],
        "val": ["person02_walking.mp4"],
        "test": ["person22_walking.mp4", "person23_walking.mp4", "person25_walking.mp4"],
    }
    with pytest.raises(DataError, match=r"data.split: person22_walking.mp4 matches the patterns of val and test"):
        prep.prepare(_cfg(tmp_path, "video", folder, 'data.split={test: ["person2*"], val: ["*22*"]}', name="b"))


def test_a_split_pattern_matching_no_file_is_named_and_training_goes_on_without_validation(
    tmp_path, tiny_overrides, capsys, caplog
):
    from nfp.training.train import train

    folder = tmp_path / "cams"
    for cam in (1, 2, 3):
        write_video(folder / f"cam{cam}.mp4", moving_shapes(18, 16, 16, seed=cam))
    split = 'data.split={test: ["cam3*"], val: ["cam9*"]}'  # a typo: no cam9
    overrides = [*tiny_overrides, "data.source=video", f"data.path={folder}", split, "data.image_size=16",
                 "data.channels=3", "train.images.every_n_epochs=1", "evaluate.every_n_epochs=1",
                 "tracking.log_model=false"]  # fmt: skip
    cfg = load_config(None, overrides)
    manifest = prep.prepare(cfg.data, progress=False)
    assert manifest.count("val") == 0
    said = [line for line in capsys.readouterr().out.splitlines() if "matches no file" in line]
    assert said == ["prepare: note: data.split.val pattern 'cam9*' matches no file: val is empty"]
    summary = train(cfg)  # strips and periodic evaluation come from val: without it, neither, and no failure
    assert len(summary["history"]["loss"]) == 2 and "val_loss" not in summary["history"]
    warned = [r.getMessage() for r in caplog.records if "without validation" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("no validation clips in ")
    assert not (tmp_path / "out" / "images").exists() or not any((tmp_path / "out" / "images").iterdir())


def _faststart_cut_short(path: Path) -> None:
    """An mp4 whose index (moov) comes first, declaring 60 frames, cut at half its bytes: it opens and demuxes fine."""
    import av

    frames = moving_shapes(60, 64, 64)  # frames big enough that the index is a small part of the file
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width, stream.pix_fmt = 64, 64, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"not a video at all" * 100), r"video .*bad.mp4: cannot be opened as a video"),
        (lambda p: p.write_bytes(write_video(p, moving_shapes(30, 16, 16)).read_bytes()[:600]),
         r"video .*bad.mp4: (cannot be opened as a video|cut short|has no frames|shorter than one clip)"),
        (lambda p: write_video(p, moving_shapes(4, 16, 16)),
         r"video .*bad.mp4: shorter than one clip: 4 frame\(s\), a clip spans 6 \(data.frames 6, data.frame_step 1\)"),
        (_faststart_cut_short, r"video .*bad.mp4: cut short: its header declares 60 frames, \d+ are there"),
    ],
    ids=["not a video", "truncated", "too short", "faststart cut short"],
)  # fmt: skip
def test_a_bad_video_is_one_line_naming_it_or_skipped_and_listed(tmp_path, make, message):
    folder = tmp_path / "videos"
    write_video(folder / "good.mp4", moving_shapes(12, 16, 16))
    make(folder / "bad.mp4")
    with pytest.raises(DataError, match=message + r".*\(data.on_bad_file=skip to leave it out\)$"):
        prep.prepare(_cfg(tmp_path, "video", folder, "data.split={train: 1.0, val: 0.0, test: 0.0}"), progress=False)
    assert not (tmp_path / "data" / "manifest.json").exists()
    cfg = _cfg(tmp_path, "video", folder, "data.split={train: 1.0, val: 0.0, test: 0.0}", "data.on_bad_file=skip")
    with pytest.warns(UserWarning, match=r"bad.mp4: skipped, "):
        manifest = prep.prepare(cfg, progress=False)
    (skipped,) = manifest.content["source"]["skipped"]
    assert skipped["file"] == "bad.mp4" and skipped["why"]
    assert manifest.content["source"]["videos"]["train"] == ["good.mp4"]


def test_an_empty_directory_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"^data.path .*empty: empty, expected .mp4/.avi/.mkv/.webm/.mov files$"):
        prep.prepare(_cfg(tmp_path, "video", tmp_path / "empty"), progress=False)
    # what is there instead, and what was expected
    (tmp_path / "pngs").mkdir()
    write_frames(tmp_path / "pngs" / "clip", moving_shapes(2, 16, 16))
    with pytest.raises(DataError, match=r"^data.path .*f0.png: a frame \(f0.png\), not a folder, expected folders of "):
        prep.prepare(_cfg(tmp_path, "frames", tmp_path / "pngs" / "clip" / "f0.png"), progress=False)
    with pytest.raises(DataError, match=r"^data.path .*clip: holds 2 .png file\(s\) only, expected .mp4/"):
        prep.prepare(_cfg(tmp_path, "video", tmp_path / "pngs" / "clip"), progress=False)


def test_videos_on_gs_are_read_through_fsspec(tmp_path, emulator, videos):
    import fsspec

    fs = fsspec.filesystem("gs", token="anon")
    for name in ("cam0.mp4", "cam4.mp4", "cam5.mp4"):
        fs.put(str(videos / name), f"nfp-test/own-videos/{name}")
    remote = prep.prepare(_cfg(tmp_path, "video", "gs://nfp-test/own-videos", name="remote"), progress=False)
    local_dir = tmp_path / "local-videos"
    local_dir.mkdir()
    for name in ("cam0.mp4", "cam4.mp4", "cam5.mp4"):
        (local_dir / name).write_bytes((videos / name).read_bytes())
    local = prep.prepare(_cfg(tmp_path, "video", local_dir, name="local"), progress=False)
    assert remote.clip_shape == local.clip_shape and _shards(tmp_path / "remote") == _shards(tmp_path / "local")


# --------------------------------------------------------------------------- frame folders
def test_frame_folders_read_in_natural_order_and_convert_rgba_once(tmp_path, capsys):
    frames = moving_shapes(12, 16, 24, seed=1)
    write_frames(tmp_path / "clips" / "a", frames)
    write_frames(tmp_path / "clips" / "b", moving_shapes(12, 16, 24, seed=2), mode="RGBA")
    write_frames(tmp_path / "clips" / "c", moving_shapes(12, 16, 24, seed=3), mode="RGBA")  # said once for both
    cfg = _cfg(tmp_path, "frames", tmp_path / "clips", "data.split={train: 1.0, val: 0.0, test: 0.0}",
               "data.clip_stride=6")  # fmt: skip
    manifest = prep.prepare(cfg, progress=False)
    assert manifest.content["source"]["videos"]["train"] == ["a", "b", "c"]
    said = [line for line in capsys.readouterr().out.splitlines() if "converted" in line]
    assert len(said) == 1 and said[0].startswith("prepare: RGBA frames are converted to RGB (the first: ")
    clips = pipeline.read_clips(cfg, manifest, "train", 4)
    np.testing.assert_array_equal(clips[1], frames[6:12])  # f6..f11, not f10, f11, f2, … (text order)


def test_16_bit_frames_are_scaled_to_8_bits_not_saturated(tmp_path, capsys):
    """A 16-bit grey PNG (Pillow's mode I;16) holds 0..65535: its gradient keeps its shades in the shards."""
    from PIL import Image

    gradient = np.linspace(0, 65535, 16 * 24).round().astype(np.uint16).reshape(16, 24)
    folder = tmp_path / "clips" / "deep"
    folder.mkdir(parents=True)
    for t in range(6):
        Image.fromarray(np.roll(gradient, t, axis=1)).save(folder / f"f{t}.png")
    assert Image.open(folder / "f0.png").mode == "I;16"
    cfg = _cfg(
        tmp_path, "frames", tmp_path / "clips", "data.split={train: 1.0, val: 0.0, test: 0.0}", "data.channels=1"
    )
    manifest = prep.prepare(cfg, progress=False)
    (clip,) = pipeline.read_clips(cfg, manifest, "train", 4)
    expected = (gradient.astype(np.int64) * 255 + 32767) // 65535
    np.testing.assert_array_equal(clip[0, ..., 0], expected)  # 0..255, every shade kept
    assert clip.min() == 0 and clip.max() == 255 and len(np.unique(clip[0])) > 200
    (said,) = [line for line in capsys.readouterr().out.splitlines() if "I;16" in line]
    assert said.startswith("prepare: I;16 frames are scaled from 16 bits to 8 (0..65535 → 0..255) (the first: ")


@pytest.mark.parametrize(
    ("mode", "values", "message"),
    [
        ("I", np.full((4, 4), 70000, np.int32), r"I pixels from 70000 to 70000, expected 8- or 16-bit values"),
        ("F", np.full((4, 4), 2.5, np.float32), r"float pixels from 2.5 to 2.5, expected values from 0 to 1"),
        ("F", np.full((4, 4), np.nan, np.float32), r"float pixels with NaN or infinity"),
    ],
    ids=["32-bit beyond 16", "float above 1", "float NaN"],
)
def test_pixels_that_cannot_be_scaled_to_8_bits_are_one_line(mode, values, message):
    from PIL import Image

    with pytest.raises(ValueError, match=message):
        images.eight_bit(Image.fromarray(values, mode))
    scaled = images.eight_bit(Image.fromarray(np.full((4, 4), 0.5, np.float32), "F"))
    assert scaled.mode == "L" and np.asarray(scaled).max() == 128


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda d: write_frames(d / "odd", moving_shapes(1, 8, 8)) and (d / "odd" / "f0.png").rename(d / "f3.png"),
         r"frame folder .*clip: frame 3 \(f3.png\): \(8, 8\)|frame 3 \(f3.png\): 8×8, the folder's first frame is 24×16"),
        (lambda d: (d / "f3.png").write_text("hello"), r"frame 3 \(f3.png\): not a readable image"),
        (lambda d: (d / "notes.txt").write_text("x"), r"\(notes.txt\): not a PNG or JPEG file"),
    ],
    ids=["sizes differ", "not an image", "a stray file"],
)  # fmt: skip
def test_a_bad_frame_folder_is_one_line_naming_the_frame(tmp_path, spoil, message):
    folder = write_frames(tmp_path / "clips" / "clip", moving_shapes(8, 16, 24))
    spoil(folder)
    with pytest.raises(DataError, match=message):
        prep.prepare(_cfg(tmp_path, "frames", tmp_path / "clips", "data.split={train: 1.0, val: 0.0, test: 0.0}"))


# --------------------------------------------------------------------------- arrays
def test_arrays_in_every_layout_give_the_same_clips(tmp_path):
    clips = np.stack([moving_shapes(6, 16, 24, seed=i) for i in range(4)])  # (N, T, H, W, C)
    np.save(tmp_path / "nthwc.npy", clips)
    np.save(tmp_path / "tnhwc.npy", clips.swapaxes(0, 1))
    np.savez(tmp_path / "stored.npz", part=clips.astype(np.float32) / 255.0)  # floats in [0, 1], memory-mapped
    split = "data.split={train: 1.0, val: 0.0, test: 0.0}"
    out = {}
    for name, layout in (("nthwc.npy", "NTHWC"), ("tnhwc.npy", "TNHWC"), ("stored.npz", "NTHWC")):
        cfg = _cfg(tmp_path, "arrays", tmp_path / name, split, f"data.layout={layout}", name=f"d-{name}")
        manifest = prep.prepare(cfg, progress=False)
        out[name] = pipeline.read_clips(cfg, manifest, "train", 4)
    for name, got in out.items():
        np.testing.assert_array_equal(got, clips, err_msg=name)
    grey = _cfg(tmp_path, "arrays", tmp_path / "nthwc.npy", split, "data.layout=NTHWC", "data.channels=1", name="g")
    assert prep.prepare(grey, progress=False).clip_shape == (6, 16, 24, 1)


def test_bad_arrays_are_one_line_naming_the_file(tmp_path):
    split = "data.split={train: 1.0, val: 0.0, test: 0.0}"
    np.savez_compressed(tmp_path / "packed.npz", x=np.zeros((2, 6, 16, 24), np.uint8))
    with pytest.raises(
        DataError, match=r"packed.npz \[x\]: compressed \(np.savez_compressed\) cannot be memory-mapped"
    ):
        prep.prepare(_cfg(tmp_path, "arrays", tmp_path / "packed.npz", split, "data.layout=NTHW"))
    np.save(tmp_path / "ints.npy", np.zeros((2, 6, 16, 24), np.int16))
    with pytest.raises(DataError, match=r"ints.npy: got shape \(2, 6, 16, 24\) dtype int16, expected a .npy of"):
        prep.prepare(_cfg(tmp_path, "arrays", tmp_path / "ints.npy", split, "data.layout=NTHW"))
    np.save(tmp_path / "grey.npy", np.zeros((2, 6, 16, 24), np.uint8))
    with pytest.raises(
        DataError, match=r"grey.npy: got shape \(2, 6, 16, 24\) dtype uint8, expected .* \(data.layout NTHWC\)"
    ):
        prep.prepare(_cfg(tmp_path, "arrays", tmp_path / "grey.npy", split, "data.layout=NTHWC"))
    clips = np.stack([moving_shapes(6, 16, 24, seed=i) for i in range(8)])  # (N, T, H, W, C)
    np.save(tmp_path / "swapped.npy", clips)
    with pytest.raises(
        DataError, match=r"swapped.npy: looks like NTHWC \(clips, time, H, W, C\), not data.layout TNHWC"
    ):
        prep.prepare(_cfg(tmp_path, "arrays", tmp_path / "swapped.npy", split, "data.layout=TNHWC", name="swap"))
    np.save(tmp_path / "hot.npy", np.full((2, 6, 16, 24), 3.0, np.float32))
    with pytest.raises(DataError, match=r"hot.npy: float values 3..3 in clip 0, expected floats in \[0, 1\]"):
        prep.prepare(_cfg(tmp_path, "arrays", tmp_path / "hot.npy", split, "data.layout=NTHW", name="hot"))


def test_float_arrays_with_nan_or_out_of_range_values_are_found_while_indexing_so_skip_skips_them(tmp_path, capsys):
    good = np.stack([moving_shapes(6, 16, 24, seed=i)[..., 0] for i in range(4)]).astype(np.float32) / 255.0
    folder = tmp_path / "arrays"
    folder.mkdir()
    np.save(folder / "a_good.npy", good)
    with_nan = good.copy()
    with_nan[2, 3, 5, 5] = np.nan
    np.save(folder / "b_nan.npy", with_nan)
    hot = good.copy()
    hot[1] *= 3
    np.save(folder / "c_hot.npy", hot)
    split = "data.split={train: 1.0, val: 0.0, test: 0.0}"
    with pytest.raises(DataError, match=r"b_nan.npy: NaN in clip 2, expected floats in \[0, 1\]"):
        prep.prepare(_cfg(tmp_path, "arrays", folder, split, "data.layout=NTHW", "data.channels=1"))
    skipping = _cfg(tmp_path, "arrays", folder, split, "data.layout=NTHW", "data.channels=1", "data.on_bad_file=skip",
                    name="skipped")  # fmt: skip
    manifest = prep.prepare(skipping, progress=False)
    whys = {s["file"]: s["why"] for s in manifest.content["source"]["skipped"]}
    assert set(whys) == {"b_nan.npy", "c_hot.npy"}
    assert "NaN in clip 2" in whys["b_nan.npy"]
    assert re.search(r"float values 0\.\.[\d.]+ in clip 1, expected floats in \[0, 1\]", whys["c_hot.npy"])
    assert manifest.count("train") == 4  # a_good.npy's clips only


def test_npz_members_are_mapped_not_loaded(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.ones((2, 6, 8, 8), np.uint8), b=np.zeros((3, 6, 8, 8), np.uint8))
    arrays = files.npy.open_arrays(tmp_path / "two.npz", "x", "NTHW")
    assert {k: (type(v).__name__, v.shape) for k, v in arrays.items()} == {
        "a": ("memmap", (2, 6, 8, 8)),
        "b": ("memmap", (3, 6, 8, 8)),
    }
    assert arrays["a"].min() == 1 and zipfile.is_zipfile(tmp_path / "two.npz")


def test_the_manifest_records_the_frame_geometry(tmp_path, videos):
    manifest = prep.prepare(_cfg(tmp_path, "video", videos, "data.channels=1"), progress=False)
    content = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert content["clip_shape"] == [6, 16, 24, 1] and manifest.frame_shape == (16, 24, 1)
    assert content["config"]["frame_size"] == [16, 24] and content["config"]["channels"] == 1


# --------------------------------------------------------------------------- end to end, per source
def _own_data(tmp_path: Path, source: str) -> tuple[Path, list[str]]:
    """Files of `source` written here, and the overrides that train on them."""
    root = tmp_path / "own"
    if source == "video":
        for i in range(5):
            write_video(root / f"v{i}.mp4", moving_shapes(24, 32, 48, seed=i))
    elif source == "frames":
        for i in range(5):
            write_frames(root / f"clip{i}", moving_shapes(24, 32, 48, seed=i))
    else:
        root.mkdir()
        np.save(root / "clips.npy", np.stack([moving_shapes(24, 32, 48, seed=i) for i in range(5)]))
    return root, [
        f"data.source={source}",
        f"data.path={root}",
        "data.layout=NTHWC",
        "data.split={train: 3, val: 1, test: 1}",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["video", "frames", "arrays"])
def test_each_source_prepares_trains_evaluates_and_predicts_from_a_video(tmp_path, tiny_overrides, source):
    from PIL import Image

    from nfp.cli import main

    _, overrides = _own_data(tmp_path, source)
    overrides = [*tiny_overrides, *overrides, "data.frame_size=[16, 24]", "data.channels=3", "data.clip_stride=3",
                 "data.prepare_processes=2", "tracking.enabled=false"]  # fmt: skip
    assert main(["prepare", *overrides]) == 0
    assert main(["train", *overrides]) == 0
    checkpoint = tmp_path / "out" / "checkpoints" / "last.keras"
    assert main(["evaluate", "--model", str(checkpoint), "--out", str(tmp_path / "eval"), *overrides]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["summary"]["clips"] == 7 and all(np.isfinite(v) for k, v in report["summary"].items() if "mse" in k)
    clip = write_video(tmp_path / "clip.mp4", moving_shapes(12, 60, 80, seed=9))  # another size: fitted to 16×24
    assert main(["predict", "--model", str(checkpoint), "--input", str(clip), "--out", str(tmp_path / "pred"),
                 "--save-npy", *overrides]) == 0  # fmt: skip
    predicted = np.load(tmp_path / "pred" / "clip.npy")
    assert predicted.shape == (3, 1, 16, 24, 3) and predicted.dtype == np.uint8  # TNHWC, in colour
    with Image.open(tmp_path / "pred" / "clip.png") as strip:
        assert strip.mode == "RGB"
    (last_strip,) = sorted((tmp_path / "out").rglob("epoch_002.png"))  # the run's prediction strips, in colour
    with Image.open(last_strip) as image:
        assert any(len(set(c)) > 1 for _, c in image.convert("RGB").getcolors(1 << 20))


@pytest.mark.slow
def test_the_videos_config_trains_evaluates_and_predicts_on_demo_videos_with_two_overrides(tmp_path):
    from nfp.cli import main

    demo = tmp_path / "demo_videos"
    # the shipped config, only its sizes shrunk (and tracking off) — data.path and data.dir are the two overrides
    shrunk = ["data.frame_size=[32,32]", "data.frames=6", "data.clip_stride=3", "model.preset=custom",
              "model.filters=[4]", "model.kernel_sizes=[3]", "model.patch_size=4", "train.epochs=2",
              "train.batch_size=2", "train.verbose=0", f"train.output_dir={tmp_path}/out", "train.images.num_clips=1",
              "evaluate.context_frames=3", "evaluate.predict_frames=3", "evaluate.every_n_epochs=1",
              "data.split={train: 3, val: 1, test: 1}", "tracking.enabled=false"]  # fmt: skip
    config = ["--config", "configs/videos.yaml", *shrunk]
    assert main(["demo-videos", "--out", str(demo), "--videos", "5", "--frames", "12", *config]) == 0
    assert sorted(p.name for p in demo.iterdir()) == [f"demo_{i:03d}.mp4" for i in range(5)]
    overrides = [f"data.path={demo}", f"data.dir={tmp_path}/data"]
    assert main(["train", *config, *overrides]) == 0
    checkpoint = str(tmp_path / "out" / "checkpoints" / "last.keras")
    assert main(["evaluate", "--model", checkpoint, "--out", str(tmp_path / "eval"), *config, *overrides]) == 0
    assert main(["predict", "--model", checkpoint, "--input", str(demo / "demo_004.mp4"), "--out",
                 str(tmp_path / "pred"), "--save-npy", *config, *overrides]) == 0  # fmt: skip
    assert np.load(tmp_path / "pred" / "demo_004.npy").shape == (3, 1, 32, 32, 3)
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["clip_shape"] == [6, 32, 32, 3] and len(manifest["source"]["videos"]["test"]) == 1


@pytest.mark.slow
def test_a_skipped_file_is_in_the_runs_manifest_and_tags_and_the_model_serves_colour_frames(tmp_path, tiny_overrides):
    import mlflow

    from nfp.training.train import train

    folder = tmp_path / "videos"
    for i in range(3):
        write_video(folder / f"v{i}.mp4", moving_shapes(12, 16, 16, seed=i))
    (folder / "broken.mp4").write_bytes(b"\0" * 2000)
    cfg = load_config(None, [*tiny_overrides, "data.source=video", f"data.path={folder}", "data.on_bad_file=skip",
                             "data.split={train: 1, val: 1, test: 1}", "train.epochs=1", "train.batch_size=2",
                             "data.frame_size=[16,24]", "data.channels=3"])  # fmt: skip
    with pytest.warns(UserWarning, match=r"broken.mp4: skipped, cannot be opened as a video"):
        summary = train(cfg)
    run = mlflow.get_run(summary["run_id"])
    assert run.data.tags["data_skipped_files"] == "1"
    manifest = json.loads(mlflow.artifacts.load_text(f"runs:/{summary['run_id']}/data/manifest.json"))
    assert [s["file"] for s in manifest["source"]["skipped"]] == ["broken.mp4"]
    (model,) = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        output_format="list",
    )
    mlmodel = mlflow.models.Model.load(model.model_uri).to_dict()
    assert json.loads(mlmodel["signature"]["outputs"])[0]["tensor-spec"]["shape"] == [-1, -1, 16, 24, 3]
    assert mlmodel["metadata"]["context"].startswith("(batch, k, 16, 24, 3)")  # served: the clips' frames in and out


# --------------------------------------------------------------------------- offline colour data, pictures in colour
def test_generated_digits_over_photos_prepare_in_colour_with_a_colour_preview(tmp_path, tiny_overrides):
    from PIL import Image

    cfg = load_config(None, [*tiny_overrides, "data.background=photos", "data.channels=3"]).data
    manifest = prep.prepare(cfg, progress=False)
    assert manifest.clip_shape == (6, 16, 16, 3) and manifest.content["source"]["background"].startswith("scikit")
    clips = pipeline.read_clips(cfg, manifest, "train", 4)
    assert (clips[..., 0] != clips[..., 1]).any()  # colour, not grey repeated
    with Image.open(tmp_path / "data" / "preview.png") as png, Image.open(tmp_path / "data" / "preview.gif") as gif:
        assert png.mode == "RGB" and gif.convert("RGB").getcolors(100000) is not None
        colours = {c for _, c in gif.convert("RGB").getcolors(100000)}
        assert any(len(set(c)) > 1 for c in colours)  # some pixel is not grey
    grey = load_config(None, [*tiny_overrides, "data.dir=" + str(tmp_path / "grey")]).data
    assert prep.prepare(grey, progress=False).content["config"]["background"] == "none"


def test_predict_input_takes_a_frame_folder_or_a_video_fitted_to_the_models_frames(tmp_path):
    from nfp.inference.predict import load_input

    cfg = load_config(
        None, ["data.frames=5", "data.frame_step=2", "evaluate.context_frames=2", "evaluate.predict_frames=3"]
    )
    folder = write_frames(tmp_path / "frames", moving_shapes(12, 30, 40, seed=4))
    clip, tag = load_input(cfg, str(folder), frame_shape=(16, 24, 1))
    assert clip.shape == (5, 16, 24, 1) and clip.dtype == np.uint8 and tag == "frames"
    expected = np.stack([images.fit(f, (16, 24), 1) for f in moving_shapes(12, 30, 40, seed=4)[0:10:2]])
    np.testing.assert_array_equal(clip, expected)  # every 2nd frame, in natural order
    video = write_video(tmp_path / "short.mp4", moving_shapes(3, 16, 16))
    assert load_input(cfg, str(video), frame_shape=(16, 16, 3))[0].shape == (2, 16, 16, 3)  # what there is of it


def test_data_path_takes_a_glob_or_a_list_and_names_files_under_it(tmp_path, capsys):
    for name in ("cams/a/x.mp4", "cams/b/y.mp4", "cams/b/notes.txt", "other/z.mkv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    listed = lambda *paths: [
        e.name for e in files.list_entries(_cfg(tmp_path, "video", json.dumps(list(map(str, paths)))))
    ]
    assert listed(tmp_path / "cams") == ["a/x.mp4", "b/y.mp4"]  # names under data.path: what patterns match
    assert listed(f"{tmp_path}/cams/*/*.mp4") == ["a/x.mp4", "b/y.mp4"]
    assert listed(tmp_path / "cams" / "b", tmp_path / "other") == ["y.mp4", "z.mkv"]
    with pytest.raises(DataError, match=r"^data.path .*nowhere: not there, expected .mp4/.avi/.mkv/.webm/.mov files"):
        listed(tmp_path / "cams", tmp_path / "nowhere")


def test_prepare_shows_progress_in_files_and_frames(tmp_path, capsys):
    folder = tmp_path / "videos"
    for i in range(2):
        write_video(folder / f"v{i}.mp4", moving_shapes(12, 16, 16, seed=i))
    prep.prepare(_cfg(tmp_path, "video", folder, "data.split={train: 1.0, val: 0.0, test: 0.0}"), progress=True)
    err = capsys.readouterr().err
    assert "2/2 [" in err and "file/s" in err.replace("s/file", "file/s")  # the index bar, in files
    assert "24/24 [" in err and "frame" in err  # 4 clips of 6 frames, counted as frames


def test_more_decoding_processes_than_cores_are_capped_and_said(capsys, monkeypatch):
    from nfp.data import workers

    monkeypatch.setattr(workers.os, "cpu_count", lambda: 2)
    pool = workers.pool(100000)
    try:
        assert pool._max_workers == 2
    finally:
        pool.shutdown()
    assert capsys.readouterr().out == "prepare: data.prepare_processes 100000 capped at this machine's 2 cores\n"
    assert workers.pool(1) is None and capsys.readouterr().out == ""


def test_a_ctrl_c_while_a_decoder_is_spawned_reaches_the_parent_once_it_is_up_and_never_the_decoder(monkeypatch):
    """The pooled-prepare Ctrl-C test lost this race: SIGINT was ignored in the parent while it spawned a decoder, so a
    Ctrl-C then was dropped and the prepare ran on. Now the parent answers it once the spawn is done, and the decoder,
    born with SIGINT blocked, never sees it: blocked or ignored at every look, ignored once it is up."""
    import concurrent.futures
    import os
    import signal
    import time

    from nfp.data import workers

    spawn = concurrent.futures.ProcessPoolExecutor._spawn_process

    def spawn_under_ctrl_c(self):
        os.kill(os.getpid(), signal.SIGINT)  # the Ctrl-C lands as the decoder is being made
        return spawn(self)

    monkeypatch.setattr(concurrent.futures.ProcessPoolExecutor, "_spawn_process", spawn_under_ctrl_c)
    pool = workers.pool(2)
    try:
        with pytest.raises(KeyboardInterrupt):
            pool._spawn_process()
        (decoder,) = pool._processes.values()

        def sigint_in(field: str) -> bool:
            line = next(ln for ln in open(f"/proc/{decoder.pid}/status") if ln.startswith(field + ":"))
            return bool(int(line.split()[1], 16) & 1 << (signal.SIGINT - 1))

        deadline = time.monotonic() + 60
        while sigint_in("SigBlk") or not sigint_in("SigIgn"):  # still starting: blocked until its initializer runs
            assert sigint_in("SigBlk") or sigint_in("SigIgn"), "the decoder could be interrupted while it starts"
            assert time.monotonic() < deadline, "the decoder never came up ignoring SIGINT"
            time.sleep(0.02)
        assert decoder.is_alive()
    finally:
        for process in pool._processes.values():
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)


def test_each_file_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    from nfp import storage

    folder = tmp_path / "videos"
    for i in range(2):
        write_video(folder / f"v{i}.mp4", moving_shapes(12, 16, 16, seed=i))
    cfg = _cfg(tmp_path, "video", folder, "data.split={train: 1.0, val: 0.0, test: 0.0}")
    prep.ensure_prepared(cfg)
    from nfp.data import identity

    assert (tmp_path / "data" / identity.HASHES).is_file()
    identity._HASHED.clear()  # a new process: only data.dir's memory
    hashed = []
    real = storage.sha256
    monkeypatch.setattr(storage, "sha256", lambda url: hashed.append(url) or real(url))
    prep.ensure_prepared(cfg)
    assert hashed == []
    import os

    os.utime(folder / "v1.mp4", (2e9, 2e9))
    prep.ensure_prepared(cfg)
    assert [Path(u).name for u in hashed] == ["v1.mp4"]


def test_two_roots_holding_one_file_name_are_told_apart_in_the_manifest(tmp_path):
    for root, seed in (("day1", 1), ("day2", 2)):
        write_video(tmp_path / root / "cam1.mp4", moving_shapes(12, 16, 16, seed=seed))
    write_video(tmp_path / "day2" / "cam2.mp4", moving_shapes(12, 16, 16, seed=3))
    cfg = _cfg(tmp_path, "video", f"[{tmp_path}/day1, {tmp_path}/day2]", 'data.split={test: ["day2/cam1*"]}')
    manifest = prep.prepare(cfg, progress=False)
    assert manifest.content["source"]["videos"] == {
        "train": ["cam2.mp4", "day1/cam1.mp4"], "val": [], "test": ["day2/cam1.mp4"],
    }  # fmt: skip


def test_a_data_dir_prepared_before_content_hashes_is_still_recognised(tmp_path):
    """Its manifest holds the older digest of names, sizes and times: the same files are the same data set."""
    from nfp.data import identity

    folder = tmp_path / "videos"
    for i in range(2):
        write_video(folder / f"v{i}.mp4", moving_shapes(12, 16, 16, seed=i))
    cfg = _cfg(tmp_path, "video", folder, "data.split={train: 1.0, val: 0.0, test: 0.0}")
    first = prep.ensure_prepared(cfg)
    manifest = tmp_path / "data" / "manifest.json"
    old = json.loads(manifest.read_text())
    old["config"]["files"] = identity.fingerprint(files.list_entries(cfg))  # as a data dir prepared before wrote it
    manifest.write_text(json.dumps(old))
    assert prep.ensure_prepared(cfg).id == first.id
    write_video(folder / "v2.mp4", moving_shapes(12, 16, 16, seed=2))
    with pytest.raises(DataError, match=r"differing in the files under data.path \(one added, removed or rewritten\)"):
        prep.ensure_prepared(cfg)


def test_a_file_that_cannot_be_hashed_is_left_to_indexing_to_name(tmp_path, monkeypatch):
    """Hashing comes before indexing: a read error there is recorded, not raised as a traceback; the index then
    refuses or skips the file in one line, as for any unreadable file."""
    from nfp import storage
    from nfp.data import identity

    write_video(tmp_path / "v" / "a.mp4", moving_shapes(12, 16, 16))
    monkeypatch.setattr(storage, "sha256", lambda url: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    records, _ = identity.content_records(files.list_entries(_cfg(tmp_path, "video", tmp_path / "v")), {})
    assert records == [["a.mp4", (tmp_path / "v" / "a.mp4").stat().st_size, "unreadable"]]
