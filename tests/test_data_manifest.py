"""manifest.json is checked as a whole when it is loaded: a hand-edited, cut or foreign one is one line naming the file
and the key, before any work relies on it; prepare writes it afresh (but never over another data set's)."""

import copy
import json

import pytest

from nfp.config import DataConfig
from nfp.data import prepare as prep
from nfp.data.manifest import load_manifest
from nfp.errors import DataError


@pytest.fixture
def prepared(tmp_path):
    """A tiny prepared dir (train 20 clips in 2 shards, val 2, test 2) and its manifest as written."""
    cfg = DataConfig(image_size=16, digit_size=8, frames=6, num_clips=24, num_shards=2, dir=str(tmp_path / "data"))
    return cfg, prep.prepare(cfg, progress=False).content


def _set(path: str, value):
    """An edit: set the dotted path (list indices as numbers) to value; value DELETE removes the key."""

    def edit(content):
        *parents, last = path.split(".")
        node = content
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is DELETE:
            del node[last]
        else:
            node[int(last) if isinstance(node, list) else last] = value
        return content

    return edit


DELETE = object()

EDITS = {
    # key named in the error: the edit
    "clip_shape (another size)": ("clip_shape", _set("clip_shape", [6, 16, 17])),
    "clip_shape (a string)": ("clip_shape", _set("clip_shape", "6x16x16")),
    "splits missing": ("splits", _set("splits", DELETE)),
    "a split missing": ("splits.val", _set("splits.val", DELETE)),
    "an unknown split": ("splits.dev", _set("splits.dev", {"count": 0, "shards": []})),
    "shards null": ("splits.train.shards", _set("splits.train.shards", None)),
    "shards a string": ("splits.test.shards", _set("splits.test.shards", "test-00000-of-00001.tfrecord")),
    "count a string": ("splits.train.count", _set("splits.train.count", "20")),
    "count negative": ("splits.val.count", _set("splits.val.count", -2)),
    "count 5× the records": ("splits.train.count", _set("splits.train.count", 100)),
    "val count above its records": ("splits.val.count", _set("splits.val.count", 3)),
    "count of an empty split": ("splits.test.count", _set("splits.test.shards", [])),
    "records negative": ("splits.train.shards[0].records", _set("splits.train.shards.0.records", -10)),
    "a shard entry a string": ("splits.train.shards[1]", _set("splits.train.shards.1", "train-00001-of-00002")),
    "a shard listed twice": (
        "splits.train.shards[1].name",
        _set("splits.train.shards.1.name", "train-00000-of-00002.tfrecord"),
    ),
    "sha256 not hex": ("splits.val.shards[0].sha256", _set("splits.val.shards.0.sha256", "abc")),
    "bytes edited": ("splits.train.shards[0].bytes", _set("splits.train.shards.0.bytes", 1)),
    "compression edited": ("splits.train.shards[0].name", _set("compression", "gzip")),
    "dtype edited": ("dtype", _set("dtype", "float32")),
    "config not an object": ("config", _set("config", [])),
    "id missing": ("id", _set("id", DELETE)),
    "a shard's sha256 edited": ("id", _set("splits.train.shards.0.sha256", "0" * 64)),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_a_hand_edited_manifest_is_one_line_naming_the_file_and_the_key(prepared, case):
    cfg, content = prepared
    key, edit = EDITS[case]
    path = f"{cfg.dir}/manifest.json"
    with open(path, "w") as f:
        json.dump(edit(copy.deepcopy(content)), f)
    with pytest.raises(DataError) as info:
        load_manifest(cfg.dir)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert message.endswith("; run `nfp prepare` to write it afresh") and "\n" not in message, message


def test_a_manifest_that_is_not_an_object_is_refused(prepared):
    cfg, _ = prepared
    (prep.storage.local_path(cfg.dir) / "manifest.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"manifest.json: got a JSON list, expected an object"):
        load_manifest(cfg.dir)


def test_every_manifest_prepare_writes_passes_the_check(tmp_path):
    for kw in (dict(compression="gzip"), dict(num_shards=3), dict(num_clips=12, num_shards=1)):
        cfg = DataConfig(image_size=16, digit_size=8, frames=6, dir=str(tmp_path / str(kw)), **{"num_clips": 24, **kw})
        assert load_manifest(prep.prepare(cfg, progress=False).dir).id


def test_evaluate_and_predict_refuse_an_edited_manifest_in_one_line(prepared, tiny_overrides, tmp_path, capsys):
    from nfp.cli import main

    cfg, content = prepared
    with open(f"{cfg.dir}/manifest.json", "w") as f:
        json.dump(_set("splits.val.count", 5)(copy.deepcopy(content)), f)
    argv = ["predict", "--model", str(tmp_path / "unused.keras"), "--input", "split:val:4", *tiny_overrides]
    assert main([*argv, f"data.dir={cfg.dir}"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {cfg.dir}/manifest.json: splits.val.count: got 5, but its 1 shard(s) hold 2 records "
        "(splits.val.shards[].records); run `nfp prepare` to write it afresh\n"
    )


def test_training_data_from_an_edited_manifest_is_prepared_afresh_with_true_counts(prepared, capsys):
    cfg, content = prepared
    with open(f"{cfg.dir}/manifest.json", "w") as f:
        json.dump(_set("splits.train.count", 100)(copy.deepcopy(content)), f)  # 5× the steps per epoch
    manifest = prep.ensure_prepared(cfg)
    assert manifest.count("train") == 20 and manifest.content == content  # the same shards, reused
    assert "splits.train.count: got 100" in capsys.readouterr().err  # said, not silent


def test_an_edited_manifest_of_another_data_set_is_not_replaced_without_overwrite(prepared):
    cfg, content = prepared
    edited = _set("splits.train.count", 100)(copy.deepcopy(content))
    edited["config"]["seed"] = 5
    with open(f"{cfg.dir}/manifest.json", "w") as f:
        json.dump(edited, f)
    with pytest.raises(DataError, match=r"holds another data set \(generate from sklearn digits, seed 5, "):
        prep.ensure_prepared(cfg)
    assert json.loads(open(f"{cfg.dir}/manifest.json").read()) == edited  # untouched
