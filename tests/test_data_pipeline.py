"""tf.data pipeline: manifest → shards → (inputs, targets) float32 in [0, 1], per protocol and mode."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from nfp.config import DataConfig
from nfp.data import pipeline
from nfp.data.manifest import load_manifest
from nfp.data.prepare import prepare
from nfp.errors import DataError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny prepared data dir (20 train clips in 2 shards, 2 val, 2 test) and its clips."""
    root = tmp_path_factory.mktemp("pipe")
    cfg = DataConfig(image_size=16, digit_size=8, frames=6, num_clips=24, num_shards=2, dir=str(root / "data"))
    prepare(cfg, progress=False)
    clips = {s: pipeline.read_clips(cfg, load_manifest(cfg.dir), s, 100) for s in ("train", "val", "test")}
    return cfg, clips


def as_arrays(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_read_clips_gives_the_first_clips_in_a_fixed_order(prepared):
    cfg, clips = prepared
    assert clips["train"].shape == (20, 6, 16, 16, 1) and clips["train"].dtype == np.uint8
    np.testing.assert_array_equal(pipeline.read_clips(cfg, load_manifest(cfg.dir), "train", 7), clips["train"][:7])


def test_clip_batches_streams_uint8_batches_up_to_max_clips(prepared):
    cfg, clips = prepared
    batches = [
        b.numpy() for b in pipeline.clip_batches(cfg, load_manifest(cfg.dir), "train", batch_size=4, max_clips=10)
    ]
    assert [len(b) for b in batches] == [4, 4, 2] and batches[0].dtype == np.uint8
    np.testing.assert_array_equal(np.concatenate(batches), clips["train"][:10])


def test_shift_protocol_pairs_frame_t_with_frame_t_plus_1(prepared):
    cfg, clips = prepared
    x, y = as_arrays(pipeline.make_dataset(cfg, load_manifest(cfg.dir), "train", 8, training=False))
    assert x.shape == (20, 5, 16, 16, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x, clips["train"][:, :-1] / 255.0, atol=1e-7)
    np.testing.assert_allclose(y, clips["train"][:, 1:] / 255.0, atol=1e-7)
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_context_protocol_pairs_k_frames_with_the_next_n(prepared):
    cfg, clips = prepared
    cfg = dataclasses.replace(cfg, protocol="context", context_frames=2, predict_frames=3)
    x, y = as_arrays(pipeline.make_dataset(cfg, load_manifest(cfg.dir), "val", 4, training=False))
    np.testing.assert_allclose(x, clips["val"][:, :2] / 255.0, atol=1e-7)
    np.testing.assert_allclose(y, clips["val"][:, 2:5] / 255.0, atol=1e-7)


def test_context_longer_than_the_clips_is_an_error(prepared):
    cfg, _ = prepared
    cfg = dataclasses.replace(cfg, protocol="context", context_frames=4, predict_frames=3)
    with pytest.raises(DataError, match="data.context_frames \\+ data.predict_frames: got 4\\+3.*6 frames"):
        pipeline.make_dataset(cfg, load_manifest(cfg.dir), "val", 4, training=False)


def test_evaluation_order_is_deterministic_and_one_pass(prepared):
    cfg, _ = prepared
    ds = pipeline.make_dataset(cfg, load_manifest(cfg.dir), "train", 8, training=False)
    first, second = as_arrays(ds), as_arrays(ds)
    np.testing.assert_array_equal(first[0], second[0])
    assert [int(x.shape[0]) for x, _ in ds] == [8, 8, 4]  # the last batch is kept
    assert int(ds.cardinality()) == 3  # from the manifest: Keras knows the pass's length up front
    assert (
        pipeline.make_dataset(cfg, load_manifest(cfg.dir), "train", 8, training=True).cardinality()
        == tf.data.INFINITE_CARDINALITY
    )


def test_training_shuffles_repeats_and_keeps_full_batches(prepared):
    cfg, clips = prepared
    ds = pipeline.make_dataset(cfg, load_manifest(cfg.dir), "train", 8, training=True)
    assert ds.element_spec[0].shape.as_list() == [8, 5, 16, 16, 1]
    assert not ds.options().deterministic  # parallel stages may hand on batches out of order…
    in_order = tf.data.Options()
    in_order.deterministic = True  # …so keep their order here to see the pass boundaries
    batches = [x.numpy() for x, _ in ds.with_options(in_order).take(6)]  # 48 clips: more than two passes over 20
    seen = np.concatenate(batches)[:20, :, :, :, 0]
    first_frames = clips["train"][:, 0, ..., 0] / 255.0
    assert not np.allclose(seen[:, 0], first_frames)  # not in file order
    matched = {int(np.argmin(np.abs(first_frames - f).sum(axis=(1, 2)))) for f in seen[:, 0]}
    assert matched == set(range(20))  # shuffled within a pass, then repeated: each clip once per pass


def test_auto_shard_policy_is_file_with_enough_shards_else_data(prepared):
    cfg, _ = prepared
    policy = tf.data.experimental.AutoShardPolicy
    two = pipeline.make_dataset(cfg, load_manifest(cfg.dir), "train", 4, training=True, num_workers=2)
    three = pipeline.make_dataset(cfg, load_manifest(cfg.dir), "train", 4, training=True, num_workers=3)
    assert two.options().experimental_distribute.auto_shard_policy == policy.FILE
    assert three.options().experimental_distribute.auto_shard_policy == policy.DATA


def test_file_sharding_gives_each_worker_its_own_shards(prepared):
    # The rewrite MultiWorkerMirroredStrategy applies (private API: there is no public one outside a cluster).
    from tensorflow.python.data.experimental.ops.distribute import _AutoShardDataset

    cfg, clips = prepared
    cfg = dataclasses.replace(cfg, shuffle_buffer=0)
    first_frames = clips["train"][:, 0, ..., 0] / 255.0
    seen = []
    for worker in range(2):
        ds = _AutoShardDataset(
            pipeline.make_dataset(cfg, load_manifest(cfg.dir), "train", 2, training=True, num_workers=2), 2, worker, 2
        )
        frames = np.concatenate([x.numpy()[:, 0, ..., 0] for x, _ in ds.take(15)])
        seen.append({int(np.argmin(np.abs(first_frames - f).sum(axis=(1, 2)))) for f in frames})
    assert seen == [set(range(10)), set(range(10, 20))]  # shard 0 → worker 0, shard 1 → worker 1


def _datasets(ds) -> list:
    found, todo = [], [ds]
    while todo:
        found.append(todo.pop())
        todo.extend(found[-1]._inputs())
    return found


def _dataset_kinds(ds) -> set[str]:
    return {type(d).__name__ for d in _datasets(ds)}


def test_cache_option_keeps_decoded_clips_after_the_first_pass(prepared, tmp_path):
    import shutil

    cfg, clips = prepared
    assert "CacheDataset" not in _dataset_kinds(
        pipeline.make_dataset(cfg, load_manifest(cfg.dir), "train", 4, training=True)
    )
    cfg = dataclasses.replace(cfg, dir=str(shutil.copytree(cfg.dir, tmp_path / "data")), cache=True)
    (cache,) = [
        d
        for d in _datasets(pipeline.make_dataset(cfg, load_manifest(cfg.dir), "train", 4, training=True))
        if type(d).__name__ == "CacheDataset"
    ]
    assert cache.element_spec == tf.TensorSpec(
        [6, 16, 16, 1], tf.uint8
    )  # clips, not records: later passes parse nothing
    val = pipeline.make_dataset(cfg, load_manifest(cfg.dir), "val", 4, training=False)
    first = as_arrays(val)
    for shard in (tmp_path / "data").glob("val-*.tfrecord"):
        shard.unlink()  # later passes never touch the files
    for a, b in zip(first, as_arrays(val)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(first[0], clips["val"][:, :-1] / 255.0, atol=1e-7)


def test_tf_data_service_serves_training_batches(prepared):
    cfg, clips = prepared
    dispatcher = tf.data.experimental.service.DispatchServer(tf.data.experimental.service.DispatcherConfig(port=0))
    address = dispatcher.target.split("://")[1]
    worker = tf.data.experimental.service.WorkerServer(
        tf.data.experimental.service.WorkerConfig(dispatcher_address=address)
    )
    ds = pipeline.make_dataset(
        dataclasses.replace(cfg, service_address=dispatcher.target), load_manifest(cfg.dir), "train", 4, training=True
    )
    assert "_DataServiceDatasetV2" in _dataset_kinds(ds)  # the input work runs on the service workers
    x, _ = next(iter(ds))
    assert x.shape == (4, 5, 16, 16, 1)
    first_frames = clips["train"][:, 0, ..., 0] / 255.0
    assert min(np.abs(first_frames - x[0, 0, ..., 0].numpy()).sum(axis=(1, 2))) < 1e-4  # a real clip
    del worker, dispatcher


def test_ram_filesystem_shards_read_like_local_ones(prepared):
    cfg, clips = prepared
    ram = dataclasses.replace(cfg, dir="ram://nfp-test/data")
    prepare(ram, progress=False)
    assert tf.io.gfile.exists("ram://nfp-test/data/manifest.json")
    np.testing.assert_array_equal(pipeline.read_clips(ram, load_manifest(ram.dir), "train", 20), clips["train"])
    x, _ = as_arrays(pipeline.make_dataset(ram, load_manifest(ram.dir), "val", 4, training=False))
    np.testing.assert_allclose(x, clips["val"][:, :-1] / 255.0, atol=1e-7)


def test_read_buffer_follows_the_config(prepared, monkeypatch):
    cfg, clips = prepared
    buffers, real = [], tf.data.TFRecordDataset

    def spy(filenames, compression_type=None, buffer_size=None, **kwargs):
        buffers.append(buffer_size)
        return real(filenames, compression_type=compression_type, buffer_size=buffer_size, **kwargs)

    monkeypatch.setattr(tf.data, "TFRecordDataset", spy)
    np.testing.assert_array_equal(pipeline.read_clips(cfg, load_manifest(cfg.dir), "val", 2), clips["val"])
    assert buffers == [256 * 1024]  # TF's own default: safe on network filesystems
    unbuffered = dataclasses.replace(cfg, read_buffer_kb=0)
    x, _ = next(iter(pipeline.make_dataset(unbuffered, load_manifest(unbuffered.dir), "train", 4, training=True)))
    np.testing.assert_array_equal(
        pipeline.read_clips(unbuffered, load_manifest(unbuffered.dir), "val", 2), clips["val"]
    )
    assert x.shape == (4, 5, 16, 16, 1) and set(buffers[1:]) == {0}


def test_an_empty_split_is_an_error(tmp_path):
    from nfp.config import SplitConfig

    cfg = DataConfig(
        image_size=16,
        digit_size=8,
        frames=6,
        num_clips=12,
        num_shards=1,
        dir=str(tmp_path / "d"),
        split=SplitConfig(train=1.0, val=0.0, test=0.0),
    )
    prepare(cfg, progress=False)
    with pytest.raises(DataError, match="split 'val': no clips"):
        pipeline.make_dataset(cfg, load_manifest(cfg.dir), "val", 4, training=False)
