"""prepare: generated clips → split → sharded TFRecords + manifest.json, idempotent, with clear errors."""

import dataclasses
import errno
import hashlib
import json

import numpy as np
import pytest
import warm

from nfp.config import DataConfig, SplitConfig
from nfp.data import moving_mnist as mm
from nfp.data import prepare as prep
from nfp.data.manifest import load_manifest
from nfp.data.pipeline import read_clips
from nfp.errors import DataError


def tiny(tmp_path, **kw) -> DataConfig:
    base = dict(image_size=16, digit_size=8, frames=6, num_clips=24, num_shards=2, dir=str(tmp_path / "data"))
    return DataConfig(**{**base, **kw})


def files(folder) -> dict[str, bytes]:
    """{name: bytes} of the files in a data dir, but for the hold's lock file (it names the last holder)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != ".nfp-prepare.lock"}


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prepare_writes_named_shards_and_a_manifest_describing_them(tmp_path):
    cfg = tiny(tmp_path)
    manifest = prep.prepare(cfg, progress=False).content
    data = tmp_path / "data"
    assert sorted(p.name for p in data.iterdir()) == [
        ".nfp-prepare.lock",  # the hold a job writing the dir has on it (see nfp.rundir)
        "manifest.json",
        "preview.gif",
        "preview.png",
        "test-00000-of-00001.tfrecord",
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
        "val-00000-of-00001.tfrecord",
    ]
    assert json.loads((data / "manifest.json").read_text()) == manifest
    assert manifest["format_version"] == 2 and manifest["clip_shape"] == [6, 16, 16, 1] and manifest["dtype"] == "uint8"
    assert manifest["record"] == "raw"
    assert manifest["source"] == {"kind": "generate", "recipe": "openstl", "seed": 0, "digit_bank": "sklearn"}
    assert {k: v["count"] for k, v in manifest["splits"].items()} == {"train": 20, "val": 2, "test": 2}
    for entry in manifest["splits"].values():
        assert sum(s["records"] for s in entry["shards"]) == entry["count"]
        for s in entry["shards"]:
            assert sha(data / s["name"]) == s["sha256"] and (data / s["name"]).stat().st_size == s["bytes"]
    assert len(manifest["id"]) == 16


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_shards_hold_exactly_the_generated_clips(tmp_path, compression):
    cfg = tiny(tmp_path, compression=compression)
    manifest = prep.prepare(cfg, progress=False).content
    bank = mm.load_digit_bank("sklearn", 8)
    for split in ("train", "val", "test"):
        n = manifest["splits"][split]["count"]
        expected = mm.generate(n, seed=0, split=split, bank=bank, frames=6, image_size=16)[..., None]
        np.testing.assert_array_equal(read_clips(cfg, load_manifest(cfg.dir), split, n), expected)
    suffix = ".tfrecord.gz" if compression == "gzip" else ".tfrecord"
    assert all(s["name"].endswith(suffix) for s in manifest["splits"]["train"]["shards"])


def test_each_record_is_one_clips_raw_bytes(tmp_path):
    """The format other readers rely on: TFRecord framing around a clip's uint8 bytes in C order, nothing else."""
    import tensorflow as tf

    cfg = tiny(tmp_path)
    manifest = prep.prepare(cfg, progress=False).content
    first_shard = str(tmp_path / "data" / manifest["splits"]["val"]["shards"][0]["name"])
    records = [r.numpy() for r in tf.data.TFRecordDataset(first_shard)]
    clips = read_clips(cfg, load_manifest(cfg.dir), "val", manifest["splits"]["val"]["count"])
    assert records == [clip.tobytes() for clip in clips] and len(records[0]) == 6 * 16 * 16


def test_rerun_skips_verified_shards_and_rewrites_missing_ones_byte_identical(tmp_path, monkeypatch):
    cfg = tiny(tmp_path)
    first = prep.prepare(cfg, progress=False).content
    shard = tmp_path / "data" / "train-00001-of-00002.tfrecord"
    before = shard.read_bytes()
    shard.unlink()
    written = []
    real = prep._write_shard
    monkeypatch.setattr(prep, "_write_shard", lambda url, name, *a: written.append(name) or real(url, name, *a))
    assert prep.prepare(cfg, progress=False).content == first
    assert written == ["train-00001-of-00002.tfrecord"]
    assert shard.read_bytes() == before


def test_a_changed_config_replaces_the_data_set_and_prunes_old_shards(tmp_path):
    prep.prepare(tiny(tmp_path), progress=False)
    manifest = prep.prepare(tiny(tmp_path, num_shards=4, compression="gzip"), progress=False).content
    names = sorted(p.name for p in (tmp_path / "data").iterdir() if not p.name.startswith(("preview.", ".")))
    assert names == sorted(["manifest.json"] + [s["name"] for e in manifest["splits"].values() for s in e["shards"]])
    assert all(n.endswith(".gz") for n in names if n != "manifest.json")


def test_ensure_prepared_reuses_a_matching_manifest_and_prepares_otherwise(tmp_path, monkeypatch):
    cfg = tiny(tmp_path)
    first = prep.ensure_prepared(cfg).content
    monkeypatch.setattr(prep, "_write", lambda *a, **k: pytest.fail("prepared again"))
    assert prep.ensure_prepared(cfg).content == first
    monkeypatch.undo()
    resharded = prep.ensure_prepared(dataclasses.replace(cfg, num_shards=1)).content  # the same clips, laid out anew
    assert resharded["id"] != first["id"] and len(resharded["splits"]["train"]["shards"]) == 1
    other = prep.ensure_prepared(dataclasses.replace(cfg, seed=1, overwrite=True)).content
    assert other["id"] != first["id"] and other["config"]["seed"] == 1


def test_a_data_dir_holding_other_clips_is_not_replaced_without_data_overwrite(tmp_path):
    cfg = tiny(tmp_path)
    first = prep.prepare(cfg, progress=False).content
    before = files(tmp_path / "data")
    with pytest.raises(DataError, match=(
        r"^data.dir .*data: holds another data set \(generate from sklearn digits, seed 0, 24 clips of 6×16×16\) than "
        r"this config makes \(generate from sklearn digits, seed 7, 24 clips of 6×16×16\), differing in data.seed: 0 → "
        r"7; use another data.dir, or set data.overwrite=true to replace it$"
    )):  # fmt: skip
        prep.ensure_prepared(dataclasses.replace(cfg, seed=7))
    assert files(tmp_path / "data") == before  # nothing touched
    assert prep.load_manifest(cfg.dir).content == first


def test_progress_bar_counts_clips(tmp_path, capsys):
    prep.prepare(tiny(tmp_path), progress=True)
    assert "24/24" in capsys.readouterr().err


def test_split_by_counts(tmp_path):
    manifest = prep.prepare(tiny(tmp_path, split=SplitConfig(train=10, val=3, test=2)), progress=False).content
    assert {k: v["count"] for k, v in manifest["splits"].items()} == {"train": 10, "val": 3, "test": 2}


def test_split_counts_above_the_available_clips_are_an_error(tmp_path):
    with pytest.raises(DataError, match="data.split: counts sum to 30, but only 24"):
        prep.prepare(tiny(tmp_path, split=SplitConfig(train=20, val=5, test=5)), progress=False)


def test_shard_counts_follow_size_and_worker_guidance():
    counts = {"train": 8000, "val": 1000, "test": 1000}
    clip = 20 * 64 * 64  # 82 kB: 8000 clips = 655 MB
    assert prep.shard_counts(DataConfig(), counts, clip) == {"train": 10, "val": 1, "test": 1}  # 10 per worker
    assert prep.shard_counts(DataConfig(num_workers=4), counts, clip)["train"] == 40
    assert prep.shard_counts(DataConfig(shard_mb=20), counts, clip) == {"train": 33, "val": 4, "test": 4}
    tiny_counts = {"train": 480, "val": 60, "test": 60}
    assert prep.shard_counts(DataConfig(), tiny_counts, 20 * 32 * 32) == {
        "train": 1,
        "val": 1,
        "test": 1,
    }  # 10 MB floor
    assert prep.shard_counts(DataConfig(num_workers=2), tiny_counts, 20 * 32 * 32)["train"] == 2  # one per worker


def test_fewer_clips_than_shards_is_an_error(tmp_path):
    with pytest.raises(DataError, match="data.num_shards: got 30 shards for 20 training clips"):
        prep.prepare(tiny(tmp_path, num_shards=30), progress=False)
    assert not (tmp_path / "data" / "manifest.json").exists()


@pytest.mark.parametrize(
    "where, message",
    [
        ("afile", r"^data.dir: .*/afile is a file, expected a directory$"),  # was "File exists"
        ("afile/data", r"^data.dir: cannot make .*/afile/data: .*/afile is a file, expected a directory$"),
    ],
)
def test_a_data_dir_that_is_or_is_under_a_file_says_so(tmp_path, where, message):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match=message):
        prep.prepare(tiny(tmp_path, dir=str(tmp_path / where)), progress=False)
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("errno_", [errno.EROFS, errno.EACCES])  # EACCES: what some read-only mounts answer
def test_a_data_dir_on_a_read_only_filesystem_says_read_only(tmp_path, monkeypatch, errno_):
    import os

    real_statvfs = os.statvfs

    def read_only_fs(path):
        st = real_statvfs(path)
        return os.statvfs_result((*st[:8], st.f_flag | os.ST_RDONLY, *st[9:]))

    def refuse(url):
        raise OSError(errno_, os.strerror(errno_), url)

    monkeypatch.setattr(os, "statvfs", read_only_fs)
    monkeypatch.setattr(prep.storage, "make_writable_dir", refuse)
    with pytest.raises(DataError, match=r"^data.dir: cannot write to .*/data: .* is on a read-only filesystem$"):
        prep.prepare(tiny(tmp_path), progress=False)


def test_a_data_dir_without_permission_says_permission_denied(tmp_path, monkeypatch):
    import os

    def refuse(url):
        raise PermissionError(errno.EACCES, "Permission denied", url)

    monkeypatch.setattr(prep.storage, "make_writable_dir", refuse)
    with pytest.raises(DataError, match=r"^data.dir: cannot write to .*/data \(Permission denied\)$"):
        prep.prepare(tiny(tmp_path), progress=False)
    assert not os.statvfs(tmp_path).f_flag & os.ST_RDONLY


def test_missing_manifest_is_an_error(tmp_path):
    with pytest.raises(DataError, match="manifest.json: not found; run `nfp prepare`"):
        load_manifest(str(tmp_path))


@pytest.mark.parametrize("version", [1, 99])  # 1: a tf.train.Example per clip, before records became raw bytes
def test_manifest_of_another_format_version_is_an_error_and_prepared_again(tmp_path, version):
    cfg = tiny(tmp_path)
    manifest = prep.prepare(cfg, progress=False).content
    (tmp_path / "data" / "manifest.json").write_text(json.dumps({**manifest, "format_version": version}))
    with pytest.raises(DataError, match=f"format_version {version}, expected 2; run `nfp prepare` again"):
        load_manifest(cfg.dir)
    assert prep.ensure_prepared(cfg).content["format_version"] == 2
    assert load_manifest(cfg.dir).content == manifest


def test_manifest_with_a_path_traversing_shard_name_is_refused(tmp_path):
    cfg = tiny(tmp_path)
    manifest = prep.prepare(cfg, progress=False).content
    manifest["splits"]["train"]["shards"][0]["name"] = "../../etc/passwd"
    (tmp_path / "data" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="'../../etc/passwd'.*not a plain shard name"):
        load_manifest(cfg.dir)


# --------------------------------------------------------------------------- which config keys make another data set
def _npy_of_tiny_clips(tmp_path) -> str:
    path = tmp_path / "clips.npy"
    bank = mm.load_digit_bank("sklearn", 8)
    np.save(path, mm.generate(24, seed=9, bank=bank, frames=6, image_size=16).transpose(1, 0, 2, 3))  # TNHW
    return str(path)


# Each key of content_config but the layout ones, changed: the clips are other clips.
GENERATE_CHANGES = {
    "source": lambda tmp_path: dict(source="download", url=_npy_of_tiny_clips(tmp_path)),
    "num_clips": lambda tmp_path: dict(num_clips=30),
    "frames": lambda tmp_path: dict(frames=5),
    "frame_size": lambda tmp_path: dict(image_size=20),
    "channels": lambda tmp_path: dict(channels=3),
    "background": lambda tmp_path: dict(background="photos"),
    "seed": lambda tmp_path: dict(seed=7),
    "split": lambda tmp_path: dict(split=SplitConfig(train=0.5, val=0.25, test=0.25)),
    "digit_bank": lambda tmp_path: dict(digit_bank="mnist"),
    "digit_size": lambda tmp_path: dict(digit_size=6),
    "digits_per_clip": lambda tmp_path: dict(digits_per_clip=1),
    "step_length": lambda tmp_path: dict(step_length=0.2),
}
DOWNLOAD_CHANGES = {  # from a download of _npy_of_tiny_clips
    "url": lambda path: dict(url=path.replace("clips.npy", "copy.npy")),
    "sha256": lambda path: dict(sha256=hashlib.sha256(open(path, "rb").read()).hexdigest()),
    "layout": lambda path: dict(layout="NTHW"),
    "num_clips": lambda path: dict(num_clips=12),
}


def test_the_changes_below_cover_every_key_that_makes_other_clips(tmp_path):
    keys = set(prep.content_config(tiny(tmp_path))) | set(prep.content_config(tiny(tmp_path, source="download")))
    assert set(GENERATE_CHANGES) | set(DOWNLOAD_CHANGES) == keys - set(prep._LAYOUT_KEYS)


@pytest.mark.parametrize("key", list(GENERATE_CHANGES))
def test_changing_any_content_key_is_refused_without_data_overwrite(tmp_path, key):
    cfg = tiny(tmp_path)
    first = prep.prepare(cfg, progress=False).content
    before = files(tmp_path / "data")
    other = dataclasses.replace(cfg, **GENERATE_CHANGES[key](tmp_path))
    for entry in (prep.prepare, prep.ensure_prepared):
        with pytest.raises(DataError, match=r"^data.dir .*: holds another data set .*set data.overwrite=true"):
            entry(other)
    assert files(tmp_path / "data") == before and load_manifest(cfg.dir).content == first


@pytest.mark.parametrize("key", list(DOWNLOAD_CHANGES))
def test_changing_any_content_key_of_a_download_is_refused_without_data_overwrite(tmp_path, key):
    path = _npy_of_tiny_clips(tmp_path)
    (tmp_path / "copy.npy").write_bytes(open(path, "rb").read())
    cfg = tiny(tmp_path, source="download", url=path, cache_dir=str(tmp_path / "cache"))
    prep.prepare(cfg, progress=False)
    before = files(tmp_path / "data")
    with pytest.raises(DataError, match=r"^data.dir .*: holds another data set \(download of .*clips.npy, "):
        prep.ensure_prepared(dataclasses.replace(cfg, **DOWNLOAD_CHANGES[key](path)))
    assert files(tmp_path / "data") == before


@pytest.mark.parametrize(
    "change", [dict(num_shards=4), dict(num_shards=0, shard_mb=0.01), dict(num_workers=2), dict(compression="gzip")]
)
def test_changing_a_layout_key_reshards_the_same_clips(tmp_path, change):
    cfg = tiny(tmp_path)
    prep.prepare(cfg, progress=False)
    clips = {s: read_clips(cfg, load_manifest(cfg.dir), s, 24) for s in ("train", "val", "test")}
    other = dataclasses.replace(cfg, **change)
    manifest = prep.ensure_prepared(other)
    assert manifest.content["config"] == prep.content_config(other)
    for split, expected in clips.items():
        np.testing.assert_array_equal(read_clips(other, manifest, split, 24), expected)


# --------------------------------------------------------------------------- the preview goes with its data set
def _previews(folder) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in ("preview.png", "preview.gif")}


@pytest.mark.parametrize("change", [dict(seed=5, overwrite=True), dict(num_shards=1), dict(frames=5, overwrite=True)])
def test_the_preview_is_drawn_anew_when_the_data_set_is_replaced_or_resharded(tmp_path, change):
    prep.prepare(tiny(tmp_path), progress=False)
    old = _previews(tmp_path / "data")
    for entry in (prep.ensure_prepared, prep.prepare):
        entry(tiny(tmp_path, **change))
        fresh = tiny(tmp_path, **{**change, "dir": str(tmp_path / f"fresh-{entry.__name__}")})
        prep.prepare(fresh, progress=False)
        assert _previews(tmp_path / "data") == _previews(tmp_path / fresh.dir)  # the new clips' look
    assert (_previews(tmp_path / "data") == old) == ("num_shards" in change)  # same clips: same picture


def test_a_replacement_that_fails_leaves_no_preview_of_the_old_clips(tmp_path, monkeypatch):
    prep.prepare(tiny(tmp_path), progress=False)

    def disk_full(*args):
        raise DataError("data.dir: cannot write shard (No space left on device)")

    monkeypatch.setattr(prep, "_write_shard", disk_full)
    with pytest.raises(DataError, match="No space left"):
        prep.prepare(tiny(tmp_path, seed=5, overwrite=True), progress=False)
    left = {p.name for p in (tmp_path / "data").iterdir()}
    assert not left & {"manifest.json", "preview.png", "preview.gif"}, left


# --------------------------------------------------------------------------- sizes that cannot fit
@pytest.mark.parametrize(
    "change, keys",
    [
        (dict(num_clips=1_000_000_000), "data.num_clips"),
        (dict(image_size=1_000_000), "data.image_size, data.frames"),
        (dict(frames=10_000_000), "data.image_size, data.frames"),
    ],
)
def test_sizes_that_cannot_fit_in_memory_are_refused_before_anything_is_made(tmp_path, monkeypatch, change, keys):
    monkeypatch.setattr("nfp.data.plan.memory_bytes", lambda: 16 * 10**9)
    with pytest.raises(DataError) as info:
        prep.prepare(tiny(tmp_path, **change), progress=False)
    message = str(info.value)
    assert message.startswith(f"{keys}: preparing ") and message.endswith(f"this machine has 16.0 GB; lower {keys}")
    assert "of memory at once" in message and "\n" not in message
    assert not (tmp_path / "data").exists()


def test_shards_that_cannot_fit_on_the_disk_are_refused_before_anything_is_made(tmp_path, monkeypatch):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr("nfp.data.plan.shutil.disk_usage", lambda path: usage(10**6, 10**6 - 20_000, 20_000))
    with pytest.raises(DataError, match=(
        r"^data.num_clips, data.image_size, data.frames: 24 clips of 6×16×16 take 37.2 kB of shards, .* has 20.0 kB "
        r"free; lower them, use data.compression=gzip or another data.dir$"
    )):  # fmt: skip
        prep.prepare(tiny(tmp_path), progress=False)
    assert not (tmp_path / "data").exists()
    prep.prepare(tiny(tmp_path, compression="gzip"), progress=False)  # compressed: not estimated, tried


def test_nfp_prepare_of_an_impossible_size_is_one_line_and_leaves_no_data_dir(tiny_overrides, tmp_path, capsys):
    from nfp.cli import main

    for override, key in (
        ("data.num_clips=1000000000", "data.num_clips"),
        ("data.image_size=1000000", "data.image_size"),
    ):
        assert main(["prepare", *tiny_overrides, override]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and key in err.split(":")[1], err
        assert not (tmp_path / "data").exists()


# --------------------------------------------------------------------------- one job writes a data dir at a time
def _nfp_prepare(tmp_path, name: str, *overrides: str):
    argv = ["data.image_size=16", "data.digit_size=8", "data.frames=6", "data.num_clips=24", "data.num_shards=2",
            f"data.dir={tmp_path}/data", "evaluate.context_frames=3", "evaluate.predict_frames=3", *overrides]  # fmt: skip
    err = open(tmp_path / f"{name}.err", "w+")
    return warm.Process(["-m", "nfp", "prepare", *argv], stderr=err), tmp_path / f"{name}.err"


def _wait_for(predicate, what: str, timeout: float = 180.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.parametrize("seeds", [(1, 2), (1, 1)], ids=["other-configs", "same-config"])
def test_two_nfp_prepare_on_one_fresh_data_dir_take_turns(tmp_path, seeds):
    """Both start while a third process holds the dir (as a first prepare would); once it lets go, one writes the dir
    and the other then sees its data: the same data set (reused, both 'prepared') or another one (refused)."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time\nfrom nfp.rundir import RunDir, held\n"
         "from nfp.data.prepare import HOLD\nos.makedirs(sys.argv[1])\n"
         "with held(RunDir(sys.argv[1]), use=HOLD):\n    print('held', flush=True)\n    time.sleep(600)\n",
         str(tmp_path / "data")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        jobs = [_nfp_prepare(tmp_path, f"job{i}", f"data.seed={seed}") for i, seed in enumerate(seeds)]
        for _, err in jobs:
            _wait_for(lambda err=err: "waiting for it to finish" in err.read_text(), f"{err.name} to wait")
        assert all(proc.poll() is None for proc, _ in jobs)  # neither wrote past the hold
    finally:
        holder.kill()
        holder.wait()
    results = []
    for proc, err in jobs:
        out, _ = proc.communicate(timeout=300)
        results.append((proc.returncode, out, err.read_text()))
    manifest = load_manifest(str(tmp_path / "data")).content
    if seeds[0] == seeds[1]:
        assert [rc for rc, _, _ in results] == [0, 0], results
        assert all(f"prepared {tmp_path}/data: train=20, val=2, test=2" in out for _, out, _ in results)
        assert manifest["config"]["seed"] == seeds[0]
        return
    assert sorted(rc for rc, _, _ in results) == [0, 2], results
    (winner,) = [seed for seed, (rc, _, _) in zip(seeds, results) if rc == 0]
    (loser,) = [(out, err) for rc, out, err in results if rc == 2]
    assert manifest["config"]["seed"] == winner  # only the winner's data, and it is whole
    assert "prepared" not in loser[0]
    assert loser[1].splitlines()[-1].startswith(f"error: data.dir {tmp_path}/data: holds another data set ("), loser
    for entry in manifest["splits"].values():
        for shard in entry["shards"]:
            assert sha(tmp_path / "data" / shard["name"]) == shard["sha256"]


def test_three_channels_of_grey_generated_digits_are_allowed_and_said_once(tmp_path, capsys):
    prep.prepare(tiny(tmp_path, channels=3), progress=False)
    said = [line for line in capsys.readouterr().out.splitlines() if "grey digits" in line]
    assert said == [
        "prepare: note: data.channels 3 with grey digits (data.background none): three equal channels, three times "
        "the storage; data.background photos makes colour clips"
    ]
    prep.prepare(tiny(tmp_path, channels=3, background="photos", dir=str(tmp_path / "colour")), progress=False)
    assert "grey digits" not in capsys.readouterr().out
