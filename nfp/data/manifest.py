"""manifest.json: the one entry point to a prepared data dir, read once per job and handed on.

It records the format version, where the clips came from, the config that made them, the clip
shape and, per split, the clip count and each shard's name, record count, size and sha256.
`prepare` writes it last; readers take a `Manifest` and never list or guess files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from nfp import storage
from nfp.data.moving_mnist import SPLITS
from nfp.errors import DataError

FORMAT_VERSION = 2  # 1: a tf.train.Example per clip
FILENAME = "manifest.json"
RECORD = "raw"  # each record is one clip's uint8 bytes, C order (T, H, W)
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
    def clip_shape(self) -> tuple[int, int, int]:
        """(frames, H, W) of every clip."""
        return tuple(self.content["clip_shape"])

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
    """The manifest of a prepared data dir (local, gs:// or any TF filesystem), checked for format and shard names."""
    url = storage.join(data_dir, FILENAME)
    try:
        content = json.loads(storage.read_bytes(url))
    except FileNotFoundError:
        raise DataError(f"{url}: not found; run `nfp prepare` with this data.dir first") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{url}: not valid JSON; delete it and run `nfp prepare` again") from None
    except Exception as err:  # tf.errors.NotFoundError, gcsfs errors, …
        if "not found" in str(err).lower() or type(err).__name__ == "NotFoundError":
            raise DataError(f"{url}: not found; run `nfp prepare` with this data.dir first") from None
        raise DataError(f"{url}: cannot read ({type(err).__name__}: {err})") from err
    version = content.get("format_version") if isinstance(content, dict) else None
    if version != FORMAT_VERSION:
        raise DataError(f"{url}: format_version {version!r}, expected {FORMAT_VERSION}; run `nfp prepare` again")
    for split, entry in content["splits"].items():
        for shard in entry["shards"]:
            if split not in SPLITS or not SHARD_NAME.match(str(shard["name"])) or not shard["name"].startswith(split):
                raise DataError(f"{url}: shard name {shard['name']!r} in split {split!r} is not a plain shard name")
    return Manifest(data_dir, content)
