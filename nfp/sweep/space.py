"""The search space: `sweep.space` read into distributions, refused up front where a value it can produce is one that
nfp's config loader refuses, and each trial's sampled values turned into `key.path=value` overrides."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import yaml

from nfp.config import load_config
from nfp.config.schema import SWEEP_DISTRIBUTIONS
from nfp.errors import ConfigError


@dataclass(frozen=True)
class Dimension:
    """One swept key: `kind` one of SWEEP_DISTRIBUTIONS; `bounds` [lo, hi] or the choices."""

    key: str
    kind: str
    bounds: tuple

    def suggest(self, trial) -> Any:
        """The trial's value (an adopted trial's earlier value: Optuna returns what a trial already suggested)."""
        if self.kind in ("log_uniform", "uniform"):
            return trial.suggest_float(self.key, *self.bounds, log=self.kind == "log_uniform")
        if self.kind == "int":
            return trial.suggest_int(self.key, *self.bounds)
        picked = trial.suggest_categorical(self.key, [as_text(v) for v in self.bounds])
        return yaml.safe_load(picked)

    def ends(self) -> list:
        """The values whose check stands for the whole range: a range's two ends, every choice."""
        return list(self.bounds)


def as_text(value) -> str:
    """A choice as Optuna stores it: YAML flow text ("tiny", "[8, 8]", "0.001"), read back by the config loader."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def override(key: str, value) -> str:
    return f"{key}={as_text(value)}"


def parse_space(space: dict, *, sampler: str) -> list[Dimension]:
    """`sweep.space` (keys dotted, `train.learning_rate: {…}`, or nested, as an override sets them) → dimensions."""
    flat = {}

    def walk(prefix: str, node) -> None:
        for name, value in node.items():
            key = f"{prefix}{name}"
            # a mapping of mappings is a section (`train: {learning_rate: {…}}`); any other value, a distribution
            if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
                walk(key + ".", value)
            else:
                flat[key] = value

    walk("", space)
    if not flat:
        raise ConfigError("sweep.space: empty, expected config key paths mapped to distributions, e.g. "
                          "train.learning_rate: {log_uniform: [1e-4, 3e-3]}")  # fmt: skip
    if any(key.startswith("sweep.") for key in flat):
        raise ConfigError(f"sweep.space.{next(k for k in flat if k.startswith('sweep.'))}: the sweep's own keys "
                          "cannot be swept")  # fmt: skip
    return [_dimension(key, spec, sampler) for key, spec in flat.items()]


def _dimension(key: str, spec, sampler: str) -> Dimension:
    where = f"sweep.space.{key}"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SWEEP_DISTRIBUTIONS:
        raise ConfigError(f"{where}: got {spec!r}, expected one of {{{', '.join(SWEEP_DISTRIBUTIONS)}: …}}")
    kind, values = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: choice got {values!r}, expected a non-empty list of values")
        return Dimension(key, kind, tuple(values))
    if sampler == "grid" and kind != "int":
        raise ConfigError(f"{where}: {kind} under sweep.sampler grid, expected int or choice (a grid has steps)")
    if not isinstance(values, list) or len(values) != 2:
        raise ConfigError(f"{where}: {kind} got {values!r}, expected [low, high]")
    try:
        lo, hi = (int(v) if kind == "int" else float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {kind} got {values!r}, expected two numbers [low, high]") from None
    if kind == "int" and any(isinstance(v, float) and not float(v).is_integer() for v in values):
        raise ConfigError(f"{where}: int got {values!r}, expected two whole numbers")
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise ConfigError(f"{where}: {kind} got {values!r}, expected low < high")
    if kind == "log_uniform" and lo <= 0:
        raise ConfigError(f"{where}: log_uniform got {values!r}, expected 0 < low < high")
    return Dimension(key, kind, (lo, hi))


def check_space(dimensions: list[Dimension], config_path, overrides: list[str]) -> None:
    """Refuse, before any trial, a key nfp does not have or a value its key refuses (a range's end past the key's
    bounds, a choice not among its options): each value is loaded into the config alone. A refusal that names another
    key (a combination) is left to the trial that samples it: it fails with that line."""
    for dim in dimensions:
        for value in dim.ends():
            try:
                load_config(config_path, [*overrides, override(dim.key, value)])
            except ConfigError as err:
                message = str(err)
                culprit = message.split(":", 1)[0].split("[", 1)[0]  # "train.learnin_rate", "model.filters"
                if culprit == dim.key or dim.key.startswith(culprit + "."):
                    raise ConfigError(f"sweep.space.{dim.key}: {as_text(value)} is refused: {message}") from None
