"""manifest.json: the one entry point to a prepared data dir, read once per job and handed on.

It records the format version, where the clips came from, the config that made them, the clip
shape and, per split, the clip count and each shard's name, record count, size and sha256.
`prepare` writes it last; readers take a `Manifest` and never list or guess files.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from nfp import storage
from nfp.data.moving_mnist import SPLITS
from nfp.errors import DataError

FORMAT_VERSION = 2  # 1: a tf.train.Example per clip
FILENAME = "manifest.json"
RECORD = "raw"  # each record is one clip's uint8 bytes, C order (T, H, W, C)
SHARD_NAME = re.compile(r"^(train|val|test)-\d{5}-of-\d{5}\.tfrecord(\.gz)?$")


@dataclass(frozen=True, eq=False)  # identity: each load is one job's handle
class Manifest:
    """A loaded manifest.json (`content`, as written) of the data dir `dir`."""

    dir: str
    content: dict

    @property
    def id(self) -> str:
        return self.content["id"]

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """(frames, H, W, C) of every clip (dirs prepared before colour record (frames, H, W): C = 1)."""
        shape = tuple(self.content["clip_shape"])
        return shape if len(shape) == 4 else (*shape, 1)

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every frame: what a model of this data takes and predicts."""
        return self.clip_shape[1:]

    @property
    def compression(self) -> str:
        return self.content["compression"]

    @property
    def splits(self) -> list[str]:
        return list(self.content["splits"])

    def split(self, name: str) -> dict:
        """{"count", "shards"} of a split; DataError naming the split when the manifest has none."""
        entry = self.content["splits"].get(name)
        if entry is None:
            raise DataError(f"split {name!r}: not in {self.url}, expected one of {', '.join(self.splits)}")
        return entry

    def count(self, split: str) -> int:
        """Clips in a split."""
        return self.split(split)["count"]

    def shards(self, split: str) -> list[dict]:
        """A split's shards in order: {"name", "records", "sha256", "bytes"} each."""
        return self.split(split)["shards"]

    def shard_names(self) -> set[str]:
        return {s["name"] for entry in self.content["splits"].values() for s in entry["shards"]}

    @property
    def url(self) -> str:
        return storage.join(self.dir, FILENAME)


def load_manifest(data_dir: str) -> Manifest:
    """The manifest of a prepared data dir (local, gs:// or any TF filesystem), checked as a whole (`check`)."""
    url = storage.join(data_dir, FILENAME)
    try:
        content = json.loads(storage.read_bytes(url))
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"{url}: not found; run `nfp prepare` with this data.dir first") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{url}: not valid JSON; delete it and run `nfp prepare` again") from None
    except Exception as err:  # tf.errors.NotFoundError, gcsfs errors, …
        if "not found" in str(err).lower() or type(err).__name__ == "NotFoundError":
            raise DataError(f"{url}: not found; run `nfp prepare` with this data.dir first") from None
        raise DataError(f"{url}: cannot read ({type(err).__name__}: {err})") from err
    check(content, url)
    return Manifest(data_dir, content)


def content_id(content: dict) -> str:
    """The id of a manifest's data: a hash of its clip shape, dtype, compression and splits (shards' sha256 included)."""
    identity = {k: content[k] for k in ("clip_shape", "dtype", "compression", "splits")}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


_FIX = "run `nfp prepare` to write it afresh"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FRAMING = 16  # bytes a TFRecord adds to each record: length, its CRC, the data's CRC


def check(content, url: str) -> None:
    """DataError "URL: KEY: got …, expected …" for the first field that is not as `nfp prepare` writes it, so a
    manifest edited by hand (or cut, or of another tool) is refused whole at load, before any work relies on it.
    Shard entries are checked against each other and the counts; the shards themselves are not read."""
    if not isinstance(content, dict):
        raise DataError(f"{url}: got a JSON {type(content).__name__}, expected an object; {_FIX}")
    version = content.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(f"{url}: format_version {version!r}, expected {FORMAT_VERSION}; run `nfp prepare` again")

    def bad(key: str, got, expected: str) -> DataError:
        shown = "missing" if got is _MISSING else f"got {_short(got)}"
        return DataError(f"{url}: {key}: {shown}, expected {expected}; {_FIX}")

    def field(obj: dict, name: str, key: str, ok, expected: str):
        value = obj.get(name, _MISSING)
        if value is _MISSING or not ok(value):
            raise bad(key, value, expected)
        return value

    for name in ("source", "config"):
        field(content, name, name, lambda v: isinstance(v, dict), "an object")
    shape = field(content, "clip_shape", "clip_shape", lambda v: isinstance(v, list) and len(v) in (3, 4) and all(
        _count(x) and x >= 1 for x in v) and (len(v) == 3 or v[3] in (1, 3)), "[frames, H, W, C] of integers >= 1, "
        "C 1 or 3")  # fmt: skip
    config = content["config"]
    made = _made_shape(config)
    if (made is not None and shape != made[: len(shape)]) or (len(shape) == 3 and made and made[3] != 1):
        raise bad("clip_shape", shape, f"{made} (config.frames, config.frame_size, config.channels: the clips it was "
                  "made with)")  # fmt: skip
    field(content, "dtype", "dtype", lambda v: v == "uint8", "'uint8'")
    field(content, "record", "record", lambda v: v == RECORD, repr(RECORD))
    compression = field(content, "compression", "compression", lambda v: v in ("none", "gzip"), "'none' or 'gzip'")
    splits = field(content, "splits", "splits", lambda v: isinstance(v, dict), f"an object of {', '.join(SPLITS)}")
    for split in splits:
        if split not in SPLITS:
            raise DataError(f"{url}: splits.{split}: not a split, expected only {', '.join(SPLITS)}; {_FIX}")
    record_bytes = shape[0] * shape[1] * shape[2] * (shape[3] if len(shape) == 4 else 1) + _FRAMING
    for split in SPLITS:
        entry = field(splits, split, f"splits.{split}", lambda v: isinstance(v, dict), "an object {count, shards}")
        count = field(entry, "count", f"splits.{split}.count", lambda v: _count(v) and v >= 0, "an integer >= 0")
        shards = field(entry, "shards", f"splits.{split}.shards", lambda v: isinstance(v, list), "a list of shards")
        for i, shard in enumerate(shards):
            key = f"splits.{split}.shards[{i}]"
            if not isinstance(shard, dict):
                raise bad(key, shard, "an object {name, records, sha256, bytes}")
            name = field(shard, "name", f"{key}.name", lambda v: isinstance(v, str), "a shard file name")
            if not SHARD_NAME.match(name) or not name.startswith(f"{split}-"):
                raise DataError(f"{url}: {key}.name: {name!r} in split {split!r} is not a plain shard name; {_FIX}")
            expected = f"{split}-{i:05d}-of-{len(shards):05d}.tfrecord" + (".gz" if compression == "gzip" else "")
            if name != expected:
                raise bad(f"{key}.name", name, f"{expected!r} (shard {i} of the {len(shards)} listed, compression "
                          f"{compression})")  # fmt: skip
            records = field(shard, "records", f"{key}.records", lambda v: _count(v) and v >= 1, "an integer >= 1")
            field(shard, "sha256", f"{key}.sha256", lambda v: isinstance(v, str) and _SHA256.match(v), "64 hex digits")
            size = field(shard, "bytes", f"{key}.bytes", lambda v: _count(v) and v >= 0, "an integer >= 0")
            if compression == "none" and size != records * record_bytes:
                raise bad(f"{key}.bytes", size, f"{records * record_bytes}: {records} records of clip_shape "
                          f"{'×'.join(map(str, shape))} and {_FRAMING} bytes of framing each")  # fmt: skip
        total = sum(s["records"] for s in shards)
        if count != total:
            raise DataError(
                f"{url}: splits.{split}.count: got {count}, but its {len(shards)} shard(s) hold {total} records "
                f"(splits.{split}.shards[].records); {_FIX}"
            )
    stated = field(content, "id", "id", lambda v: isinstance(v, str), "a string")
    if stated != content_id(content):
        raise DataError(
            f"{url}: id: got {stated!r}, expected {content_id(content)!r}, the hash of its clip_shape, dtype, "
            f"compression and splits: changed since `nfp prepare` wrote it; {_FIX}"
        )


_MISSING = object()


def _made_shape(config: dict) -> list[int] | None:
    """[frames, H, W, C] the manifest's config makes (frame_size, or image_size before rectangular frames), None when
    it does not say."""
    hw = config.get("frame_size")
    if hw is None and _count(config.get("image_size")):
        hw = [config["image_size"]] * 2
    channels = config.get("channels", 1)
    if not (_count(config.get("frames")) and isinstance(hw, list) and len(hw) == 2 and all(map(_count, hw))):
        return None
    return [config["frames"], *hw, channels]


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "…"
