"""gs:// through gcsfs against gcp-storage-emulator: prepare writes shards + manifest, staging reads them back."""

import dataclasses
import os
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import BUCKET

from nfp.cli import main
from nfp.config import load_config
from nfp.data import pipeline
from nfp.data import prepare as prep
from nfp.data.manifest import load_manifest
from nfp.data.shards import naming_bad_shards
from nfp.errors import DataError


@pytest.fixture
def gcs():
    import gcsfs

    return gcsfs.GCSFileSystem(token="anon")


def configs(tiny_overrides, tmp_path, prefix):
    local = load_config(None, tiny_overrides).data
    remote = load_config(
        None,
        tiny_overrides + [f"data.dir=gs://{BUCKET}/{prefix}", "data.stage=true", f"data.stage_dir={tmp_path}/staged"],
    ).data
    return local, remote


def test_nfp_prepare_writes_shards_and_manifest_to_gcs(emulator, gcs, tiny_overrides, tmp_path, capsys):
    assert main(["prepare", *tiny_overrides, f"data.dir=gs://{BUCKET}/cli"]) == 0
    gcs.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[1] for p in gcs.ls(f"{BUCKET}/cli"))
    assert names == [
        "manifest.json",
        "preview.gif",
        "preview.png",
        "test-00000-of-00001.tfrecord",
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
        "val-00000-of-00001.tfrecord",
    ]
    assert "prepared gs://nfp-test/cli: train=20, val=2, test=2" in capsys.readouterr().out


def test_staged_gcs_shards_yield_the_same_arrays_as_a_local_dir(emulator, tiny_overrides, tmp_path):
    local, remote = configs(tiny_overrides, tmp_path, "stage")
    manifest = prep.prepare(remote, progress=False).content
    assert prep.prepare(local, progress=False).id == manifest["id"]  # same bytes, wherever they live
    for split in ("train", "val"):
        a = [x.numpy() for x, _ in pipeline.make_dataset(local, load_manifest(local.dir), split, 4, training=False)]
        b = [x.numpy() for x, _ in pipeline.make_dataset(remote, load_manifest(remote.dir), split, 4, training=False)]
        np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))
    staged = sorted(os.listdir(tmp_path / "staged" / manifest["id"]))
    assert staged == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord", "val-00000-of-00001.tfrecord"]
    np.testing.assert_array_equal(
        pipeline.read_clips(remote, load_manifest(remote.dir), "test", 2),
        pipeline.read_clips(local, load_manifest(local.dir), "test", 2),
    )
    assert prep.ensure_prepared(remote).content == manifest


def test_rerun_on_gcs_skips_verified_shards(emulator, tiny_overrides, tmp_path, monkeypatch):
    _, remote = configs(tiny_overrides, tmp_path, "rerun")
    first = prep.prepare(remote, progress=False).content
    monkeypatch.setattr(prep, "_write_shard", lambda *a: pytest.fail("rewrote a verified shard"))
    assert prep.prepare(remote, progress=False).content == first


def test_a_corrupted_gcs_shard_fails_staging_naming_it(emulator, gcs, tiny_overrides, tmp_path):
    _, remote = configs(tiny_overrides, tmp_path, "corrupt")
    prep.prepare(remote, progress=False)
    path = f"{BUCKET}/corrupt/val-00000-of-00001.tfrecord"
    data = bytearray(gcs.cat_file(path))
    data[40] ^= 1
    gcs.pipe_file(path, bytes(data))
    with pytest.raises(
        DataError, match="shard gs://nfp-test/corrupt/val-00000-of-00001.tfrecord: sha256 .* from the manifest"
    ):
        pipeline.make_dataset(remote, load_manifest(remote.dir), "val", 2, training=False)
    assert not [n for n in os.listdir(next((tmp_path / "staged").iterdir())) if n.startswith("val")]  # nothing kept


def test_a_record_error_on_a_direct_gcs_read_names_the_corrupted_shard(emulator, gcs, tiny_overrides, tmp_path):
    _, staged = configs(tiny_overrides, tmp_path, "direct")
    direct = dataclasses.replace(staged, stage=False)  # TF reads gs:// itself: no up-front hash, only its CRC check
    prep.prepare(direct, progress=False)
    path = f"{BUCKET}/direct/train-00001-of-00002.tfrecord"
    data = bytearray(gcs.cat_file(path))
    data[len(data) // 2] ^= 1
    gcs.pipe_file(path, bytes(data))
    # TF's GCS filesystem cannot reach the emulator, so raise the DataLossError its reader would raise
    with pytest.raises(
        DataError, match="shard gs://nfp-test/direct/train-00001-of-00002.tfrecord: sha256 .* from the manifest"
    ):
        with naming_bad_shards(direct, load_manifest(direct.dir), "val", "train"):
            raise tf.errors.DataLossError(None, None, "corrupted record at 1234")


def test_a_corrupted_staged_copy_is_named_with_staging_advice(emulator, tiny_overrides, tmp_path):
    _, remote = configs(tiny_overrides, tmp_path, "stagedbad")
    manifest = prep.prepare(remote, progress=False).content
    pipeline.make_dataset(remote, load_manifest(remote.dir), "val", 2, training=False)  # stages and verifies the copy
    copy = tmp_path / "staged" / manifest["id"] / "val-00000-of-00001.tfrecord"
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 1
    copy.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"shard {copy}: sha256 .* from the manifest; run again to stage it afresh$"):
        with naming_bad_shards(remote, load_manifest(remote.dir), "val"):
            raise tf.errors.DataLossError(None, None, "corrupted record at 0")
    pipeline.make_dataset(remote, load_manifest(remote.dir), "val", 2, training=False)  # which the next run does
    assert pipeline.read_clips(remote, load_manifest(remote.dir), "val", 2).shape[0] == 2


def test_a_missing_gcs_manifest_is_an_error(emulator, tmp_path):
    with pytest.raises(DataError, match="gs://nfp-test/nowhere/manifest.json: not found"):
        load_manifest(f"gs://{BUCKET}/nowhere")


def test_gs_without_credentials_is_one_line_in_seconds(tmp_path, capsys, monkeypatch):
    """No emulator, no ADC file, no key, no metadata server: say how to authenticate instead of retrying for minutes."""

    from nfp import storage

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no application-default credentials there
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")  # nothing listens: not a Google Cloud VM
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    monkeypatch.setattr(storage, "_GCS_CREDENTIALS_FOUND", False)
    start = time.monotonic()
    assert main(["prepare", "data.dir=gs://some-bucket/data", "data.num_clips=24"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: gs://some-bucket/data") and "no Google Cloud credentials found" in err, err
    assert err.count("\n") == 1 and time.monotonic() - start < 30
