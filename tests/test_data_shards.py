"""Shard integrity: every shard TF reads matches its manifest entry, and a shard that does not is named."""

import dataclasses

import pytest
import tensorflow as tf

from nfp.config import DataConfig
from nfp.data import pipeline
from nfp.data.manifest import load_manifest
from nfp.data.prepare import prepare
from nfp.data.shards import naming_bad_shards
from nfp.errors import DataError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny prepared data dir: 20 train clips in 2 shards, 2 val, 2 test."""
    root = tmp_path_factory.mktemp("shards")
    cfg = DataConfig(image_size=16, digit_size=8, frames=6, num_clips=24, num_shards=2, dir=str(root / "data"))
    prepare(cfg, progress=False)
    return cfg, None


@pytest.fixture
def copy_of(prepared, tmp_path):
    import shutil

    cfg, _ = prepared
    shutil.copytree(cfg.dir, tmp_path / "copy")
    return dataclasses.replace(cfg, dir=str(tmp_path / "copy"))


def test_a_flipped_byte_in_a_shard_is_an_error_naming_it(copy_of):
    shard = f"{copy_of.dir}/train-00001-of-00002.tfrecord"
    data = bytearray(open(shard, "rb").read())
    data[100] ^= 1
    open(shard, "wb").write(bytes(data))
    with pytest.raises(DataError, match="train-00001-of-00002.tfrecord: sha256 .* expected .* from the manifest"):
        pipeline.make_dataset(copy_of, load_manifest(copy_of.dir), "train", 4, training=True)
    with pytest.raises(DataError, match="train-00001-of-00002.tfrecord"):
        pipeline.read_clips(copy_of, load_manifest(copy_of.dir), "train", 4)


def test_a_shard_that_changes_after_the_check_is_named_when_tf_trips_on_it(copy_of, flip_a_byte, capsys):
    ds = pipeline.clip_batches(copy_of, load_manifest(copy_of.dir), "train", 4)  # verified here, against the manifest
    flip_a_byte(f"{copy_of.dir}/train-00001-of-00002.tfrecord")
    with pytest.raises(tf.errors.DataLossError, match="corrupted record"):
        list(ds)  # TF's own error names no file…
    with pytest.raises(
        DataError, match=r"^shard .*/train-00001-of-00002.tfrecord: sha256 .* expected .* from the manifest"
    ):
        with naming_bad_shards(copy_of, load_manifest(copy_of.dir), "val", "train"):  # …so hash the shards to find it
            list(ds)
    assert "hashing the val/train shards" in capsys.readouterr().err


def rewrite_records(shard, change) -> None:
    """Rewrite a shard's records through change(list of bytes): valid TFRecord CRCs, so TF's record check passes."""
    records = [r.numpy() for r in tf.data.TFRecordDataset(shard)]
    with tf.io.TFRecordWriter(shard) as writer:
        for record in change(records):
            writer.write(record)


@pytest.mark.parametrize(
    "shard, batch, change, symptom",
    [
        ("train-00000-of-00002", 2, lambda rs: [r[:-8] for r in rs], "Input to reshape"),  # a batch of short records
        (
            "train-00000-of-00002",
            2,
            lambda rs: [r + r for r in rs],
            "Input to reshape",
        ),  # would pass as twice the clips
        ("train-00001-of-00002", 4, lambda rs: [r + r for r in rs], "DecodeRaw requires"),  # a batch across two shards
    ],
)
def test_a_shard_rewritten_with_records_of_another_size_is_named(copy_of, shard, batch, change, symptom):
    ds = pipeline.clip_batches(
        copy_of, load_manifest(copy_of.dir), "train", batch
    )  # verified here, against the manifest
    rewrite_records(f"{copy_of.dir}/{shard}.tfrecord", change)
    with pytest.raises(tf.errors.InvalidArgumentError, match=symptom):
        list(ds)  # a record of another size: never regrouped into other clips, and TF names no file…
    with pytest.raises(DataError, match=rf"^shard .*/{shard}.tfrecord: sha256 .* from the manifest"):
        with naming_bad_shards(copy_of, load_manifest(copy_of.dir), "train"):
            list(ds)


def test_a_shard_with_fewer_records_than_its_manifest_is_named_by_evaluation(copy_of):
    ds = pipeline.make_dataset(
        copy_of, load_manifest(copy_of.dir), "train", 4, training=False
    )  # carries the manifest's 5 batches
    rewrite_records(f"{copy_of.dir}/train-00000-of-00002.tfrecord", lambda rs: rs[:1])
    with pytest.raises(DataError, match=r"^shard .*/train-00000-of-00002.tfrecord: sha256 .* from the manifest"):
        with naming_bad_shards(copy_of, load_manifest(copy_of.dir), "train"):
            list(ds)


def test_other_tf_errors_pass_through_without_hashing(copy_of, capsys):
    with pytest.raises(tf.errors.InvalidArgumentError, match="Matrix size-incompatible"):
        with naming_bad_shards(copy_of, load_manifest(copy_of.dir), "train"):
            raise tf.errors.InvalidArgumentError(None, None, "Matrix size-incompatible: In[0]: [4,3], In[1]: [5,2]")
    assert "hashing" not in capsys.readouterr().err


def test_a_flipped_byte_that_keeps_size_and_mtime_is_still_named(copy_of, flip_a_byte):
    import os

    shard = f"{copy_of.dir}/val-00000-of-00001.tfrecord"
    pipeline.make_dataset(
        copy_of, load_manifest(copy_of.dir), "val", 4, training=False
    )  # hashed once and remembered by (size, mtime)
    stat = os.stat(shard)
    flip_a_byte(shard)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as media errors or `cp -p` leave it
    with pytest.raises(DataError, match=r"val-00000-of-00001.tfrecord: sha256 .* from the manifest"):
        with naming_bad_shards(copy_of, load_manifest(copy_of.dir), "val"):
            raise tf.errors.DataLossError(None, None, "corrupted record at 0")
    with pytest.raises(DataError, match="val-00000-of-00001.tfrecord: sha256"):
        pipeline.make_dataset(
            copy_of, load_manifest(copy_of.dir), "val", 4, training=False
        )  # and the memo no longer vouches for it


def test_tfs_error_stands_when_the_shards_cannot_be_hashed(copy_of, monkeypatch, capsys):
    from nfp import storage

    def unreadable(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(storage, "sha256", unreadable)
    with pytest.raises(tf.errors.DataLossError, match="corrupted record at 7"):
        with naming_bad_shards(copy_of, load_manifest(copy_of.dir), "train"):
            raise tf.errors.DataLossError(None, None, "corrupted record at 7")
    assert "could not hash the shards (PermissionError" in capsys.readouterr().err


def test_tfs_error_stands_when_every_shard_matches(copy_of):
    with pytest.raises(tf.errors.DataLossError, match="not from a shard"):
        with naming_bad_shards(copy_of, load_manifest(copy_of.dir), "train", "val"):
            raise tf.errors.DataLossError(None, None, "not from a shard")


def test_a_missing_shard_is_an_error_naming_it(copy_of):
    import os

    os.remove(f"{copy_of.dir}/val-00000-of-00001.tfrecord")
    with pytest.raises(DataError, match="val-00000-of-00001.tfrecord: missing"):
        pipeline.make_dataset(copy_of, load_manifest(copy_of.dir), "val", 4, training=False)
