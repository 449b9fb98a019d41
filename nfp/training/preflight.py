"""Refusals before any compute: what a config or an output dir would make fail later, in one line each."""

from __future__ import annotations

from nfp import storage
from nfp.errors import ConfigError
from nfp.rundir import RunDir


def check_tensorboard(train_cfg) -> None:
    import importlib.util

    if train_cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "train.tensorboard: needs the tensorboard package; install it with pip install 'nfp[tensorboard]'"
        )


# What the backup's optimizer state is shaped by (the weights: the family's WEIGHT_KEYS): a change to any of them
# cannot resume from it (other changes, a learning rate or batch size, load, and tracking warns that the run keeps
# its original params).
_OPTIMIZER_STATE = {"adam": "moments", "adamw": "moments", "sgd": "none"}  # AdamW keeps Adam's variables


def check_backup_fits(cfg, out: RunDir) -> None:
    """ConfigError before any work when the output dir's backup was trained with a model or optimizer this config
    cannot restore into, judged from the config.yaml the earlier attempt left; the keys named, old → new."""
    import yaml

    saved = out.file("config.yaml")
    if not out.resume_epoch() or not storage.exists(saved):
        return
    try:
        old = yaml.safe_load(storage.read_bytes(saved))
    except yaml.YAMLError:
        return  # no judgement to make from it: restoring the backup says what does not fit
    from nfp import models

    new = yaml.safe_load(cfg.to_yaml())
    if isinstance(old, dict) and isinstance(old.get("model"), dict):
        old["model"].setdefault("family", models.DEFAULT_FAMILY)  # a config from before families
    family = models.of_config(cfg.model)
    keys = [
        "model.family", *(f"model.{key}" for key in family.WEIGHT_KEYS),
        *(["model.norm"] if _at(new, "model.cell") == "keras" else []),  # norm layers hold weights
        *(["data.context_frames"] if family.KIND == "direct" else []),  # the frames a direct model stacks
    ]  # fmt: skip
    changed = [f"{k}: {_at(old, k)} → {_at(new, k)}" for k in keys if _at(old, k) != _at(new, k)]
    if _at(old, "model.family") != _at(new, "model.family"):
        changed = changed[:1]  # another family: its keys say nothing more
    was, now = _at(old, "train.optimizer"), _at(new, "train.optimizer")
    if _OPTIMIZER_STATE.get(was, was) != _OPTIMIZER_STATE.get(now, now):
        changed.append(f"train.optimizer: {was} → {now}")
    if changed:
        raise ConfigError(
            f"train.output_dir {out.root}: its backup was trained with another model or optimizer ({'; '.join(changed)})"
            f" and cannot be resumed with this config: rerun with the config it was trained with ({saved}), or use "
            "another train.output_dir to start over"
        )


def _at(tree, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def check_output_dir(output_dir: str) -> None:
    """ConfigError now, before any data or model work, when the output dir could not be made (nothing is made yet)."""
    try:
        storage.check_could_write(output_dir)
    except OSError as err:
        raise ConfigError(f"train.output_dir: cannot write to {output_dir} ({err.strerror}: {err.filename})") from None


def make_output_dir(output_dir: str) -> None:
    try:
        storage.make_writable_dir(output_dir)
    except OSError as err:
        raise ConfigError(f"train.output_dir: cannot write to {output_dir} ({err.strerror or err})") from None


def check_same_data(cfg, out: RunDir) -> None:
    """ConfigError before any work when the output dir's backup was trained on another data set than `cfg.data`
    makes (judged from the manifest.json the earlier attempt left, as nfp prepare judges a data dir): resuming would
    mix two data sets in one run, and log a second dataset input into it."""
    import json

    from nfp.data.identity import config_of, content_config, what_differs
    from nfp.data.manifest import Manifest

    saved = out.file("manifest.json")
    if not out.resume_epoch() or not storage.exists(saved):
        return
    try:
        old = Manifest(out.root, json.loads(storage.read_bytes(saved)))
        skipped = bool(old.content.get("source", {}).get("skipped"))
        differs = what_differs(config_of(old), content_config(cfg.data), skipped=skipped)
    except (ValueError, KeyError, TypeError, AttributeError):
        return  # no judgement to make from it
    if differs:
        raise ConfigError(
            f"train.output_dir {out.root}: its backup was trained on another data set (data {old.id}; "
            f"{'; '.join(differs)}) and cannot be resumed on it: rerun with the data it was trained on (its config: "
            f"{out.file('config.yaml')}), or use another train.output_dir to start over"
        )
