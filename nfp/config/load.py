"""Loading: a YAML file plus `key.path=value` overrides, a preset's family and recipe filled in, every value coerced
to its key's type and checked, the whole config checked for consistency."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import shlex
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from nfp.config.checks import check_consistency
from nfp.config.schema import Config, DataConfig, ModelConfig
from nfp.errors import ConfigError


# --------------------------------------------------------------------------- loading
def load_config(
    path: str | Path | None = None, overrides: list[str] | str | None = (), *, only: tuple[str, ...] | None = None
) -> Config:
    """Read a YAML config, apply `key.path=value` overrides, return a validated Config. `only`: the key paths a
    command uses (e.g. nfp demo-videos: the frame size and seed); the others are left at their defaults, unchecked,
    so a key the command never reads cannot refuse it."""
    raw: dict = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    in_file = {k for k in ("frame_size", "image_size") if isinstance(raw.get("data"), dict) and k in raw["data"]}
    overridden = set()
    for item in _split_overrides(overrides):
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key.path=value")
        _set_path(raw, key.strip(), _parse_value(text))
        overridden.add(key.strip())
    if only is not None:
        kept: dict = {}
        for dotted in only:
            section, _, key = dotted.partition(".")
            if isinstance(raw.get(section), dict) and key in raw[section]:
                kept.setdefault(section, {})[key] = raw[section][key]
        cfg = _build(Config, kept, "")  # each kept value's own type and bounds; nothing across keys
        return cfg
    _fill_in_preset(raw)
    _check_data_keys(raw.get("data"), in_file=in_file, overridden=overridden)
    cfg = _build(Config, raw, "")
    if cfg.train.loss == "auto":
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, loss=loss_for(cfg.model.output_activation)))
    check_consistency(cfg)
    return cfg


def _check_data_keys(data, *, in_file: set[str], overridden: set[str]) -> None:
    """What the data section says that its keys' types alone cannot: a frame size that is not [H, W], two keys that
    both set the frame size in one place (an override of data.frame_size over a file's data.image_size is meant to
    win; the reverse would be ignored), a split that is a bare pattern (one line each, naming the keys)."""
    if not isinstance(data, dict):
        return  # _build names it
    size = data.get("frame_size")
    if isinstance(size, list) and len(size) != 2:
        raise ConfigError(
            f"data.frame_size: got {size}, expected [H, W] (a frame's height and width; colour is data.channels)"
        )
    if size is not None and "frame_size" in data and "image_size" in data and size != [data["image_size"]] * 2:
        # data.frame_size wins: refused only where that hides what someone wrote to take effect
        ignored = "data.image_size" in overridden and "data.frame_size" not in overridden  # over the file's frame_size
        if ignored or {"frame_size", "image_size"} <= in_file - {k.partition(".")[2] for k in overridden}:
            raise ConfigError(
                f"data.frame_size and data.image_size: both set ({size} and {data['image_size']}), expected one: "
                "data.frame_size [H, W], or data.image_size for square frames (data.frame_size wins; override it, "
                "not data.image_size, over a config that sets it)"
            )
    split = data.get("split")
    for name, value in split.items() if isinstance(split, dict) else ():
        if isinstance(value, str):
            raise ConfigError(
                f"data.split.{name}: got {value!r}, expected a fraction, a count or a list of patterns ([{value!r}])"
            )


def loss_for(output_activation: str) -> str:
    """The loss `train.loss: auto` means: BCE on probabilities from a sigmoid head, MSE on a linear head."""
    return "bce" if output_activation == "sigmoid" else "mse"


def _fill_in_preset(raw: dict) -> None:
    """Resolve the model's family from its preset (or model.family), refuse model keys the family does not read, and
    set every model key the config leaves unset to its preset's value; likewise the preset's training recipe (train
    keys) and a direct family's data.protocol (context) and evaluate.context_frames and predict_frames (the data's)."""
    from nfp import models

    model = raw.get("model")
    if model is None:
        model = raw["model"] = {}
    if not isinstance(model, dict):
        return  # _build names the bad section
    preset, given = model.get("preset"), model.get("family")
    if (
        not isinstance(preset, (str, type(None)))
        or preset not in (*models.PRESETS, "custom", None)
        or given not in (*models.FAMILIES, None)
    ):
        return  # _build names the bad value
    if preset is None:  # a family alone picks its default preset
        preset = models.family(given).DEFAULT_PRESET if given else ModelConfig.preset
        model["preset"] = preset
    if preset == "custom":
        name, bundle, recipe = given or ModelConfig.family, {}, {}
    else:
        name, bundle, recipe = models.preset_bundle(preset)
        if given is not None and given != name:
            raise ConfigError(
                f"model.family: got {given}, but model.preset {preset} is a {name} preset; expected {name} "
                f"(or model.preset: custom, or a {given} preset)"
            )
    model["family"] = name
    family = models.family(name)
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    for key in model:
        if key in fields and key not in ("preset", "family", *family.KEYS):
            raise ConfigError(
                f"model.{key}: does not apply to model.family {name}; its keys are {', '.join(family.KEYS)}"
            )
    for key, value in bundle.items():
        model.setdefault(key, copy.deepcopy(value))
    _fill_in(raw, "train", recipe)
    if family.KIND == "direct":
        _fill_in(raw, "data", {"protocol": "context"})
        data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
        frames = {key: data.get(key, getattr(DataConfig, key)) for key in ("context_frames", "predict_frames")}
        _fill_in(raw, "evaluate", frames)


def _fill_in(raw: dict, section: str, defaults: dict) -> None:
    """Set the keys of `defaults` (nested mappings too) that raw[section] leaves unset."""
    if not defaults:
        return
    node = raw.get(section)
    if node is None:
        node = raw[section] = {}
    if not isinstance(node, dict):
        return  # _build names the bad section
    for key, value in defaults.items():
        if isinstance(value, dict):
            _fill_in(node, key, value)
        else:
            node.setdefault(key, copy.deepcopy(value))


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path}: not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte {err.start}), expected a YAML file") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as err:
        raise ConfigError(f"config file {path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path}: not valid YAML{where}") from None
    if raw is None:
        raise ConfigError(f"config file {path}: empty, expected a mapping of sections")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


class _DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML lets the last one win silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(f"key {key!r} given twice (line {key_node.start_mark.line + 1}), expected once")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _split_overrides(overrides) -> list[str]:
    """Accept a list of `k=v` or one shell-quoted string of them (MLproject's -P overrides="a=1 b='[1, 2]'")."""
    if not overrides:
        return []
    if isinstance(overrides, str):
        return shlex.split(overrides)
    return list(overrides)


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return text


def _set_path(raw: dict, dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, cannot set {dotted}")
        node = child
    node[parts[-1]] = value


def _closest_key(name: str, path: str, fields: list[str]) -> str | None:
    """The key a misspelt `name` under `path` likely meant: the closest of its section's (difflib), else the same
    name in another section (`model.channels` → `data.channels`)."""
    import difflib

    near = difflib.get_close_matches(name, fields, n=1, cutoff=0.75)
    if near:
        return f"{path}.{near[0]}" if path else near[0]
    hints = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        if section.name != path and name in {f.name for f in dataclasses.fields(hints[section.name])}:
            return f"{section.name}.{name}"
    return None


def _build(cls, raw: Any, path: str):
    where = path or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = f"{path}.{unknown[0]}" if path else str(unknown[0])
        near = _closest_key(str(unknown[0]), path, list(fields))
        if near:
            raise ConfigError(f"{key}: unknown key, did you mean {near}?")
        raise ConfigError(f"{key}: unknown key; allowed: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        key = f"{path}.{name}" if path else name
        values[name] = _coerce(hints[name], raw[name], key, f.metadata)
    return cls(**values)


def _coerce(hint, value, key: str, meta) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) > 1:  # a number or a list (data.split.*): the list form when a list is given
            listed = [a for a in inner if typing.get_origin(a) is list]
            inner = listed if isinstance(value, list) else [a for a in inner if a not in listed]
        return _coerce(inner[0], value, key, meta)
    if origin is Literal:
        if isinstance(value, bool) and "off" in args:  # YAML 1.1 reads on/off as booleans; true means on, else auto
            value = ("on" if "on" in args else "auto") if value else "off"
        if value not in args:
            raise ConfigError(f"{key}: got {value!r}, expected one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if isinstance(value, str) and args[0] is str:  # one path, pattern or device for a list of them
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: got {value!r}, expected a list of {args[0].__name__}")
        return [_coerce(args[0], item, f"{key}[{i}]", meta) for i, item in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: got {value!r}, expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: got {value!r}, expected an integer")
    elif hint is float:
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: got {value!r}, expected a number")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key}: got {value!r}, expected a finite number")
    elif hint is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: got {value!r}, expected a non-empty string")
    lo, hi = (meta.get("min"), meta.get("max")) if hint in (int, float) else (None, None)
    if lo is not None and value < lo:
        raise ConfigError(f"{key}: got {value!r}, expected >= {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key}: got {value!r}, expected <= {hi}")
    return value
