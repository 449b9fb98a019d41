"""`nfp predict`: roll a model out from a clip's first frames; write a PNG strip, a side-by-side GIF, optionally .npy.

Inputs: a .npy of clips in data.layout (by default mnist_test_seq.npy's (time, clips, H, W); uint8, or floats
in [0, 1] as the arrays source reads them) as `PATH` or `PATH:INDEX`, checked by the loader `data.url` files go
through (nfp.data.npy); a prepared split's clip as `split:NAME:INDEX`; a freshly generated clip as `generate:SEED`
(Moving MNIST with the cfg.data recipe); or a video file or frame folder.
Frames past the clip's end have no ground truth: they are shown black in the truth row/pane.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from nfp.errors import ConfigError, DataError


def run_predict(
    cfg, *, model_uri, inputs, context_frames=None, horizon=None, out_dir=None, save_npy=False
) -> dict[str, Path]:
    """Predict `horizon` frames from the first `context_frames` of one clip; → {"strip", "gif"[, "npy"]} paths."""
    from nfp import models, storage, visualize
    from nfp.distribute import devices
    from nfp.inference import interruptible
    from nfp.inference.model_source import load_model
    from nfp.inference.serving import MAX_HORIZON

    k = cfg.evaluate.context_frames if context_frames is None else context_frames
    n = cfg.evaluate.predict_frames if horizon is None else horizon
    if k < 1:
        raise ConfigError(f"--context: got {k}, expected >= 1")
    horizon_key = "--horizon" if horizon is not None else "evaluate.predict_frames"
    if not 1 <= n <= MAX_HORIZON:  # the served model's bound: a horizon past it would only fill memory
        raise ConfigError(f"{horizon_key}: got {n}, expected 1 to {MAX_HORIZON} frames (predict from the last ones "
                          f"to go further)")  # fmt: skip
    out_dir = storage.output_dir_flag(out_dir, storage.join(cfg.train.output_dir, "predict"))
    from nfp.data import files

    fitted = files.is_clip_file(inputs)  # fitted to the model's frames: the model first
    model = load_model(model_uri) if fitted else None
    clip, tag = load_input(cfg, inputs, frame_shape=_frame_shape(model, cfg) if fitted else None)
    tag, made = _unique_tag(out_dir, tag, inputs)
    if k >= len(clip):
        raise ConfigError(f"--context: got {k}, expected < the clip length {len(clip)} of {inputs}")
    model = model or load_model(model_uri)
    models.check_compatible(model, clip.shape[1:])
    models.check_context(model, k, "--context" if context_frames is not None else "evaluate.context_frames")

    context = clip[None, :k].astype(np.float32) / 255.0
    choices = devices.for_inference(cfg.train, model, models.rollout_batch_shape(model, 1, k, n, clip.shape[1:]))
    rolled = interruptible.call(models.rollout, model, context, n, jit_compile=choices.jit_compile)[0]  # (n, H, W, C)
    predicted = (np.clip(rolled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    truth = np.zeros_like(predicted)
    known = clip[k : k + n]
    truth[: len(known)] = known

    with tempfile.TemporaryDirectory(prefix="nfp-predict-") as tmp:
        tmp = Path(tmp)
        # rows as the run's MLflow strips draw them: labelled, frames scaled up to be legible, long rows wrapped
        rows = [("context", clip[:k]), *([("truth", known)] if len(known) else []), ("prediction", predicted)]
        strip = visualize.labelled_rows(rows, visualize.frame_scale(clip.shape[1]), wrap=visualize.ROW_FRAMES)
        visualize.write_png(strip, tmp / f"{tag}.png", scale=1)
        # the context plays in both panes, then truth (left) vs. prediction (right)
        both = visualize.side_by_side_frames(np.concatenate([clip[:k], truth]), np.concatenate([clip[:k], predicted]))
        visualize.write_gif(both, tmp / f"{tag}.gif")
        names = {"strip": f"{tag}.png", "gif": f"{tag}.gif"}
        if save_npy:  # mnist_test_seq.npy's layout TNHW (TNHWC in colour), so it can be fed back to `nfp predict`
            np.save(tmp / f"{tag}.npy", (predicted[..., 0] if predicted.shape[-1] == 1 else predicted)[:, None])
            names["npy"] = f"{tag}.npy"
        (tmp / INPUTS).write_text(json.dumps(made, indent=1, sort_keys=True))
        storage.publish(tmp, out_dir)
    return {key: storage.output_path(out_dir, name) for key, name in names.items()}


INPUTS = "inputs.json"  # in --out: {output name: the input it was made from}


def _unique_tag(out_dir: str, tag: str, spec: str) -> tuple[str, dict]:
    """(the name of this input's outputs, --out's record of names and inputs with it): `tag`, or `tag-<hash>` when
    --out holds a `tag` made from another input (a/clip.mp4, then b/clip.mp4), so that a rerun of one input replaces
    its own outputs and never another's."""
    from nfp import storage

    source = spec if spec.startswith(("split:", "generate:")) or "://" in spec else os.path.abspath(spec)
    url = storage.join(out_dir, INPUTS)
    try:
        made = json.loads(storage.read_bytes(url)) if storage.exists(url) else {}
    except ValueError:
        made = {}  # a record cut short: names from here on
    if made.get(tag, source) != source:
        tag = f"{tag}-{hashlib.sha256(source.encode()).hexdigest()[:6]}"
    return tag, {**made, tag: source}


def load_input(cfg, spec: str, *, frame_shape: tuple[int, int, int] | None = None) -> tuple[np.ndarray, str]:
    """(one clip (T, H, W, C) uint8, a file-name tag) from `split:NAME:INDEX`, `generate:SEED`, `PATH[:INDEX]` of a
    .npy, or a video file or frame folder (its first data.frames frames, every data.frame_step-th, fitted to
    `frame_shape`, default the config's)."""
    if spec.startswith("split:"):
        return _split_clip(cfg, spec)
    if spec.startswith("generate:"):
        return _generated_clip(cfg, spec)
    from nfp.data import files

    if files.is_clip_file(spec):
        shape = frame_shape or cfg.data.frame_shape
        return files.first_clip(cfg.data, spec, shape[:2], shape[2], label=f"--input {spec}"), Path(spec).stem
    return _npy_clip(cfg, spec)


def _frame_shape(model, cfg) -> tuple[int, int, int]:
    """(H, W, C) the model takes: what a video or frame folder is fitted to (the config's when it does not say)."""
    shape = tuple(getattr(model, "inputs", [None])[0].shape[2:]) if getattr(model, "inputs", None) else ()
    return shape if len(shape) == 3 and all(shape) else cfg.data.frame_shape


def _int(text: str, spec: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"--input {spec}: {what} {text!r} is not an integer") from None
    if value < 0:
        raise ConfigError(f"--input {spec}: {what} {value} is negative")
    return value


def _split_clip(cfg, spec: str) -> tuple[np.ndarray, str]:
    from nfp.data.manifest import load_manifest
    from nfp.data.pipeline import read_clips

    parts = spec.split(":")
    if len(parts) != 3:
        raise ConfigError(f"--input {spec}: expected split:NAME:INDEX, e.g. split:test:0")
    name, index = parts[1], _int(parts[2], spec, "index")
    manifest = load_manifest(cfg.data.dir)
    count = manifest.count(name)
    if index >= count:
        raise DataError(
            f"--input {spec}: index {index} out of range, split {name!r} of {cfg.data.dir} has {count} clips"
        )
    return read_clips(cfg.data, manifest, name, index + 1)[index], f"{name}_{index}"


def _generated_clip(cfg, spec: str) -> tuple[np.ndarray, str]:
    from nfp.data import moving_mnist

    seed = _int(spec.removeprefix("generate:"), spec, "seed")
    d = cfg.data
    bank = moving_mnist.load_digit_bank(d.digit_bank, d.digit_size)
    clips = moving_mnist.generate(
        1, seed=seed, split="test", bank=bank, frames=d.frames, image_size=d.frame_hw,
        digits_per_clip=d.digits_per_clip, step_length=d.step_length,
    )  # fmt: skip
    backgrounds = photos = None
    if d.background == "photos":
        photos = moving_mnist.load_photos(d.frame_hw)
        backgrounds = moving_mnist.draw_backgrounds(seed, "test", 1, len(photos))
    clips = moving_mnist.dressed(clips, channels=d.channels, backgrounds=backgrounds, photos=photos,
                                 step_length=d.step_length)  # fmt: skip
    return clips[0], f"generated_{seed}"


def _npy_clip(cfg, spec: str) -> tuple[np.ndarray, str]:
    """Clip INDEX (default 0) of a .npy in data.layout, read by the loader data.url's files go through too."""
    from nfp.data import npy

    path, index = spec, None
    head, sep, tail = spec.rpartition(":")
    if sep and head and re.fullmatch(r"-?\d+", tail) and not os.path.exists(spec):
        path, index = head, int(tail)
    label = f"--input {path}"
    npy.check_file(Path(path), label, "expected a .npy, split:NAME:INDEX or generate:SEED, a video or a frame folder")
    # as the arrays source reads them: uint8 0–255, or floats in [0, 1]
    clips = npy.open_clips(Path(path), cfg.data.layout, label, floats=True)  # (time, clips, H, W, C), memory-mapped
    count, index = clips.shape[1], index or 0
    valid = f"expected 0 to {count - 1}" if count else "it has none"
    if index < 0:
        raise DataError(f"--input {spec}: index {index} is negative, {valid} ({path} has {count} clips)")
    if index >= count:
        raise DataError(f"--input {spec}: index {index} out of range, {path} has {count} clips ({valid})")
    clip = np.ascontiguousarray(clips[:, index])
    if clip.dtype != np.uint8:
        from nfp.data.files import check_float_values

        check_float_values(clip[:, None], label, first_clip=index)  # NaN or outside [0, 1]: one line, as in prepare
        clip = np.rint(clip * 255.0).astype(np.uint8)
    return clip, f"{Path(path).stem}_{index}"
