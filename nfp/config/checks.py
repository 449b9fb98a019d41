"""Checks across keys: what each key allows alone is the schema's; what keys allow together is here."""

from __future__ import annotations

from nfp.config.schema import FILE_SOURCES, Config, DataConfig, SplitConfig
from nfp.errors import ConfigError


def check_consistency(cfg: Config) -> None:
    """Rules that span several keys."""
    from nfp import models

    d, m, e = cfg.data, cfg.model, cfg.evaluate
    fractions = [d.split.train, d.split.val, d.split.test] if d.split.patterns() is None else [1, 0, 0]
    if not d.split.are_counts() and all(f <= 1 for f in fractions) and abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(f"data.split: fractions sum to {sum(fractions):g}, expected 1 (or give clip counts > 1)")
    if any(f > 1 for f in fractions) and not all(float(f).is_integer() for f in fractions):
        raise ConfigError("data.split: mixes counts and fractions, expected all counts or all fractions")
    if fractions[0] <= 0:
        raise ConfigError("data.split.train: got 0, expected training clips")
    _check_geometry(d)
    _check_files(d)
    if d.protocol == "context" and d.context_frames + d.predict_frames > d.frames:
        raise ConfigError(
            f"data.context_frames + data.predict_frames: got {d.context_frames}+{d.predict_frames}, "
            f"expected <= data.frames ({d.frames})"
        )
    if e.context_frames >= d.frames:
        raise ConfigError(f"evaluate.context_frames: got {e.context_frames}, expected < data.frames ({d.frames})")
    if e.protocol == "rollout" and e.context_frames + e.predict_frames > d.frames:
        raise ConfigError(
            f"evaluate.context_frames + evaluate.predict_frames: got {e.context_frames}+{e.predict_frames}, "
            f"expected <= data.frames ({d.frames})"
        )
    family = models.of_config(m)
    family.check(m, d)
    if family.KIND == "direct":
        _check_direct(cfg)
    t = cfg.train
    if t.loss == "bce" and m.output_activation != "sigmoid":
        raise ConfigError(
            f"train.loss: got bce, expected mse with model.output_activation: {m.output_activation} (BCE needs probabilities)"
        )
    if t.schedule.name == "onecycle" and t.schedule.warmup_epochs:
        raise ConfigError(
            f"train.schedule.warmup_epochs: got {t.schedule.warmup_epochs}, expected 0 with train.schedule.name: "
            "onecycle (its warm-up is the first 30% of train.epochs)"
        )
    if t.scheduled_sampling and family.WITHOUT_SCHEDULED_SAMPLING:
        raise ConfigError(
            f"train.scheduled_sampling: got {t.scheduled_sampling}, expected 0 with model.family {m.family} "
            f"({family.WITHOUT_SCHEDULED_SAMPLING})"
        )
    if t.scheduled_sampling and m.cell != "nfp":
        preset_cell = family.PRESETS.get(m.preset, {}).get("cell")
        chosen = f"model.preset {m.preset} sets it" if preset_cell == m.cell else "set by the config or an override"
        raise ConfigError(f"train.scheduled_sampling: needs model.cell: nfp (got model.cell: {m.cell}, {chosen})")
    if t.scheduled_sampling and d.protocol != "shift":
        raise ConfigError(
            "train.scheduled_sampling: needs data.protocol: shift (the model must see the frames it predicts)"
        )
    bad_scheme = [s for s in d.allowed_schemes if s not in ("http", "https", "gs", "file")]
    if bad_scheme:
        raise ConfigError(f"data.allowed_schemes: got {bad_scheme[0]!r}, expected http, https, gs or file")
    alias = cfg.tracking.alias
    if alias is not None and cfg.tracking.register_as is None:
        raise ConfigError(f"tracking.alias: got {alias!r}, needs tracking.register_as (it names a registered version)")
    # MLflow's rule for aliases, checked before training rather than after it
    bad_alias = alias is not None and (
        not all(c.isalnum() or c in "_-" for c in alias)
        or alias.lower() == "latest"
        or (alias[0] in "vV" and alias[1:].isdigit())
    )
    if bad_alias:
        raise ConfigError(
            f"tracking.alias: got {alias!r}, expected letters, digits, _ and -, not latest or v<number> (version names)"
        )


def _check_direct(cfg: Config) -> None:
    """A direct family predicts data.predict_frames from exactly data.context_frames frames."""
    d, e, family = cfg.data, cfg.evaluate, cfg.model.family
    if d.protocol != "context":
        raise ConfigError(
            f"data.protocol: got {d.protocol}, expected context with model.family {family} (a direct model predicts "
            "data.predict_frames frames from data.context_frames at once)"
        )
    if e.protocol != "rollout":
        raise ConfigError(
            f"evaluate.protocol: got {e.protocol}, expected rollout with model.family {family} (one_step scores "
            "next-frame predictions, which a direct model does not make)"
        )
    if e.context_frames < d.context_frames:
        raise ConfigError(
            f"evaluate.context_frames: got {e.context_frames}, expected >= data.context_frames ({d.context_frames}) "
            f"with model.family {family}: the model predicts from exactly that many frames"
        )


def _check_geometry(d: DataConfig) -> None:
    if d.frame_size is not None and len(d.frame_size) != 2:
        raise ConfigError(f"data.frame_size: got {d.frame_size!r}, expected [H, W]")
    if d.channels not in (1, 3):
        raise ConfigError(f"data.channels: got {d.channels!r}, expected 1 (grey) or 3 (RGB)")
    if d.source == "generate":
        if d.digit_size > min(d.frame_hw):
            side = (
                f"the frame's shorter side ({min(d.frame_hw)})" if d.frame_size else f"data.image_size ({d.image_size})"
            )
            raise ConfigError(f"data.digit_size: got {d.digit_size}, expected <= {side}")
    if d.background != "none" and d.source != "generate":
        raise ConfigError(f"data.background: got {d.background}, expected none with data.source: {d.source} "
                          "(backgrounds are drawn by generate)")  # fmt: skip


def _check_files(d: DataConfig) -> None:
    """The keys of the sources that read your own files: set where they apply, and only there."""
    if d.source in FILE_SOURCES and not d.path:
        raise ConfigError(
            f"data.path: empty, expected the files of data.source: {d.source} (a directory, a glob or a list)"
        )
    if d.source not in FILE_SOURCES and d.path:
        raise ConfigError(
            f"data.path: set, but data.source is {d.source}; expected data.source: video, frames or arrays"
        )
    patterns = d.split.patterns()
    if patterns is None:
        return
    if d.source not in FILE_SOURCES:
        raise ConfigError(
            f"data.split: name patterns split files, expected fractions or counts with data.source: {d.source}"
        )
    for name in ("val", "test"):
        value = getattr(d.split, name)
        if not isinstance(value, list) and value != getattr(SplitConfig, name):
            raise ConfigError(
                f"data.split.{name}: got {value!r} beside name patterns, expected a list of patterns (or leave it out)"
            )
    if isinstance(d.split.train, list) and d.split.train:
        return
    if not patterns["val"] and not patterns["test"]:
        raise ConfigError("data.split: name patterns are all empty, expected patterns of the val or test files")
