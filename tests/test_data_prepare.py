"""prepare: generated clips → split → sharded TFRecords + manifest.json, idempotent, with clear errors."""

import dataclasses
import hashlib
import json

import numpy as np
import pytest

from nfp.config import DataConfig, SplitConfig
from nfp.data import moving_mnist as mm
from nfp.data import prepare as prep
from nfp.data.manifest import load_manifest
from nfp.data.pipeline import read_clips
from nfp.errors import DataError


def tiny(tmp_path, **kw) -> DataConfig:
    base = dict(image_size=16, digit_size=8, frames=6, num_clips=24, num_shards=2, dir=str(tmp_path / "data"))
    return DataConfig(**{**base, **kw})


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prepare_writes_named_shards_and_a_manifest_describing_them(tmp_path):
    cfg = tiny(tmp_path)
    manifest = prep.prepare(cfg, progress=False).content
    data = tmp_path / "data"
    assert sorted(p.name for p in data.iterdir()) == [
        "manifest.json",
        "preview.gif",
        "preview.png",
        "test-00000-of-00001.tfrecord",
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
        "val-00000-of-00001.tfrecord",
    ]
    assert json.loads((data / "manifest.json").read_text()) == manifest
    assert manifest["format_version"] == 2 and manifest["clip_shape"] == [6, 16, 16] and manifest["dtype"] == "uint8"
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
        expected = mm.generate(n, seed=0, split=split, bank=bank, frames=6, image_size=16)
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
    names = sorted(p.name for p in (tmp_path / "data").iterdir() if not p.name.startswith("preview."))
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
    before = {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()}
    with pytest.raises(DataError, match=(
        r"^data.dir .*data: holds another data set \(generate from sklearn digits, seed 0, 24 clips of 6×16×16\) than "
        r"this config makes \(generate from sklearn digits, seed 7, 24 clips of 6×16×16\); use another data.dir, or "
        r"set data.overwrite=true to replace it$"
    )):  # fmt: skip
        prep.ensure_prepared(dataclasses.replace(cfg, seed=7))
    assert {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()} == before  # nothing touched
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


def test_unwritable_destination_is_an_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="data.dir: cannot write to .*file/data"):
        prep.prepare(tiny(tmp_path, dir=str(tmp_path / "file" / "data")), progress=False)


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
