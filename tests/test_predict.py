"""`nfp predict`: inputs from .npy / split / generator, PNG strip + GIF + .npy outputs, one-line errors."""

import numpy as np
import pytest
import warm
from PIL import Image

from nfp import visualize
from nfp.data.manifest import load_manifest
from nfp.errors import ConfigError, DataError
from nfp.inference.predict import load_input, run_predict


@pytest.fixture
def cfg(tiny_overrides):
    from nfp.config import load_config

    return load_config(None, tiny_overrides + ["tracking.enabled=false"])


@pytest.fixture
def checkpoint(tiny_checkpoint):
    """A tiny model fit for a few steps on tiny prepared data, saved as .keras."""
    return tiny_checkpoint


def _noise_npy(path, clips=3, frames=6, size=16, dtype=np.uint8):
    """Random clips in mnist_test_seq.npy's layout (time, clips, H, W): every frame differs."""
    array = np.random.default_rng(0).integers(0, 256, (frames, clips, size, size)).astype(dtype)
    np.save(path, array)
    return array


def test_predict_from_npy_writes_strip_gif_and_npy_of_the_rollout(cfg, checkpoint, tmp_path):
    import keras

    from nfp.models.convlstm.model import rollout

    clips = _noise_npy(tmp_path / "clips.npy")
    out = tmp_path / "pred"
    paths = run_predict(
        cfg,
        model_uri=checkpoint,
        inputs=f"{tmp_path}/clips.npy:2",
        context_frames=2,
        horizon=4,
        out_dir=out,
        save_npy=True,
    )
    assert set(paths) == {"strip", "gif", "npy"}
    assert paths["strip"] == out / "clips_2.png"
    with Image.open(paths["gif"]) as gif:
        assert gif.n_frames == 2 + 4  # context, then truth vs. prediction
        assert gif.size == ((16 * 2 + 2) * 2, (16 + 2) * 2)  # two panes and a gap over a 2-px time bar, scaled 2×
    with Image.open(paths["strip"]) as strip:
        assert strip.size == (visualize.LABEL_PX + 4 * 66 - 2, 3 * 66 - 2)  # rows of 2, 4, 4 frames scaled 4×
    predicted = np.load(paths["npy"])
    assert predicted.dtype == np.uint8 and predicted.shape == (4, 1, 16, 16)  # the input layout again
    context = clips[:2, 2][None, ..., None].astype(np.float32) / 255.0
    expected = rollout(keras.saving.load_model(checkpoint), context, 4)[0, ..., 0]
    np.testing.assert_allclose(predicted[:, 0] / 255.0, expected, atol=1 / 255)
    assert sorted(p.name for p in out.iterdir()) == ["clips_2.gif", "clips_2.npy", "clips_2.png", "inputs.json"]


def test_predict_from_a_split_with_defaults_and_from_the_generator_with_one_context_frame(cfg, checkpoint):
    paths = run_predict(cfg, model_uri=checkpoint, inputs="split:test:0")
    assert paths["gif"].parent.name == "predict" and paths["strip"].is_file()  # default <train.output_dir>/predict
    with Image.open(paths["gif"]) as gif:
        assert gif.n_frames > 1  # exact count only on noise clips: Pillow merges identical consecutive frames
    paths = run_predict(cfg, model_uri=checkpoint, inputs="generate:7", context_frames=1, horizon=8, save_npy=True)
    assert paths["gif"].name == "generated_7.gif"
    assert np.load(paths["npy"]).shape == (8, 1, 16, 16)  # past the clip's 6 frames: prediction only


def test_inputs_resolve_to_one_uint8_clip(cfg, tmp_path):
    from nfp.data.pipeline import read_clips
    from nfp.data.prepare import prepare

    clips = _noise_npy(tmp_path / "c.npy")
    clip, tag = load_input(cfg, str(tmp_path / "c.npy"))
    np.testing.assert_array_equal(clip, clips[:, 0, ..., None])
    assert tag == "c_0"
    prepare(cfg.data, progress=False)
    clip, tag = load_input(cfg, "split:val:1")
    np.testing.assert_array_equal(clip, read_clips(cfg.data, load_manifest(cfg.data.dir), "val", 2)[1])
    assert tag == "val_1"
    a, _ = load_input(cfg, "generate:3")
    b, _ = load_input(cfg, "generate:3")
    assert a.dtype == np.uint8 and a.shape == (6, 16, 16, 1) and a.max() > 0
    np.testing.assert_array_equal(a, b)  # a seed is a clip


@pytest.mark.parametrize(
    "make, spec, error, message",
    [
        (
            lambda p: _noise_npy(p, dtype=np.float32),  # floats, but 0–255: as the arrays source says
            "{p}",
            DataError,
            r"^--input .*in.npy: float values [\d.]+\.\.[\d.]+ in clip 0, expected floats in \[0, 1\] \(or uint8 0–255\)",
        ),
        (
            lambda p: np.save(p, np.zeros((6, 16, 16), np.uint8)),
            "{p}",
            DataError,
            r"got shape \(6, 16, 16\) dtype uint8",
        ),
        (lambda p: _noise_npy(p), "{p}:3", DataError, r"index 3 out of range, .* has 3 clips \(expected 0 to 2\)$"),
        (
            lambda p: _noise_npy(p),
            "{p}:-1",
            DataError,
            r"index -1 is negative, expected 0 to 2 \(.*in.npy has 3 clips\)$",
        ),
        (lambda p: _noise_npy(p), "{p}:-7", DataError, r"index -7 is negative, expected 0 to 2"),
        (lambda p: None, "{p}:-1", DataError, r"^--input .*in.npy: not found, expected a .npy, split:NAME:INDEX"),
        (lambda p: p.write_text("not numpy"), "{p}", DataError, r"not a .npy file \(no NumPy header\)"),
        (
            lambda p: None,
            "{p}",
            DataError,
            r"^--input .*in.npy: not found, expected a .npy, split:NAME:INDEX or generate",
        ),
        (lambda p: None, "split:test", ConfigError, "expected split:NAME:INDEX"),
        (lambda p: None, "generate:x", ConfigError, "seed 'x' is not an integer"),
    ],
)
def test_bad_inputs_are_one_line_errors(cfg, tmp_path, make, spec, error, message):
    path = tmp_path / "in.npy"
    make(path)
    with pytest.raises(error, match=message) as info:
        run_predict(cfg, model_uri="unused.keras", inputs=spec.format(p=path))
    assert "\n" not in str(info.value)


def test_split_index_out_of_range_and_context_too_long_are_errors(cfg, tmp_path):
    from nfp.data.prepare import prepare

    prepare(cfg.data, progress=False)
    with pytest.raises(DataError, match="index 99 out of range, split 'test' of .* has \\d+ clips"):
        run_predict(cfg, model_uri="unused.keras", inputs="split:test:99")
    _noise_npy(tmp_path / "c.npy")
    with pytest.raises(ConfigError, match="--context: got 6, expected < the clip length 6"):
        run_predict(cfg, model_uri="unused.keras", inputs=str(tmp_path / "c.npy"), context_frames=6)
    with pytest.raises(ConfigError, match="--horizon: got 0"):
        run_predict(cfg, model_uri="unused.keras", inputs=str(tmp_path / "c.npy"), horizon=0)
    # bounded as the served model is: 100000 frames would run for minutes into gigabytes, deaf to Ctrl-C
    with pytest.raises(ConfigError, match=r"^--horizon: got 100000, expected 1 to 1000 frames \(predict from the last"):
        run_predict(cfg, model_uri="unused.keras", inputs=str(tmp_path / "c.npy"), horizon=100000)


def test_nfp_predict_cli_prints_the_paths(tiny_overrides, checkpoint, tmp_path, capsys):
    from nfp.cli import main

    _noise_npy(tmp_path / "c.npy")
    args = ["predict", "--model", checkpoint, "--input", f"{tmp_path}/c.npy:1", "--context", "3", "--horizon", "3"]
    assert main([*args, "--out", str(tmp_path / "o"), *tiny_overrides]) == 0
    printed = capsys.readouterr().out
    assert f"gif: {tmp_path}/o/c_1.gif" in printed and "npy" not in printed


def test_a_shard_corrupted_behind_the_check_is_named_by_predict(
    tiny_overrides, checkpoint, tmp_path, corrupt_after_building, capsys
):
    from nfp.cli import main

    corrupt_after_building(
        "clip_batches", lambda data_cfg, split: tmp_path / "data" / f"{split}-00000-of-00001.tfrecord"
    )
    argv = ["predict", "--model", checkpoint, "--input", "split:val:1", "--out", str(tmp_path / "pred")]
    assert main([*argv, *tiny_overrides, "tracking.enabled=false"]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith(("error", "Traceback"))]
    assert line.startswith("error: shard ") and "val-00000-of-00001.tfrecord: sha256" in line
    assert not (tmp_path / "pred").exists()


def test_a_long_horizon_strip_wraps_as_the_mlflow_strips_do(cfg, checkpoint, tmp_path):
    from PIL import Image

    paths = run_predict(
        cfg, model_uri=checkpoint, inputs="split:test:0", context_frames=2, horizon=300, out_dir=tmp_path
    )
    with Image.open(paths["strip"]) as strip:
        width, height = strip.size
    assert width == visualize.LABEL_PX + visualize.ROW_FRAMES * 66 - 2  # ten 4×-scaled frames a line, not 300
    assert height == (1 + 1 + 30) * 66 - 2  # context, the 4 known truth frames, 300 predictions in 30 lines


def test_two_inputs_of_one_name_keep_their_own_outputs_and_a_rerun_replaces_its_own(cfg, checkpoint, tmp_path):
    import json

    from media import moving_shapes, write_frames

    a = write_frames(tmp_path / "a" / "clip", moving_shapes(6, 16, 16, seed=1))
    b = write_frames(tmp_path / "b" / "clip", moving_shapes(6, 16, 16, seed=2))
    out = tmp_path / "predictions"
    first = run_predict(cfg, model_uri=checkpoint, inputs=str(a), context_frames=3, horizon=2, out_dir=str(out))
    second = run_predict(cfg, model_uri=checkpoint, inputs=str(b), context_frames=3, horizon=2, out_dir=str(out))
    assert first["strip"].name == "clip.png" and second["strip"].name.startswith("clip-")  # b's, beside a's
    a_strip = first["strip"].read_bytes()
    again = run_predict(cfg, model_uri=checkpoint, inputs=str(a), context_frames=3, horizon=2, out_dir=str(out))
    assert again["strip"] == first["strip"] and first["strip"].read_bytes() == a_strip  # replaced, not duplicated
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".png") == sorted(["clip.png", second["strip"].name])
    made = json.loads((out / "inputs.json").read_text())
    assert made == {"clip": str(a), second["strip"].stem: str(b)}


def test_a_float_npy_in_0_1_is_read_as_the_arrays_source_reads_it(cfg, tmp_path):
    """One loader: what data.source arrays takes, nfp predict --input takes."""
    ints = _noise_npy(tmp_path / "ints.npy")
    np.save(tmp_path / "floats.npy", ints.astype(np.float32) / 255.0)
    as_floats, _ = load_input(cfg, f"{tmp_path}/floats.npy:1")
    as_ints, _ = load_input(cfg, f"{tmp_path}/ints.npy:1")
    assert as_floats.dtype == np.uint8
    np.testing.assert_array_equal(as_floats, as_ints)


# A stand-in for one call into TensorFlow that runs for ever: a Python signal handler cannot run inside it
_ENDLESS_CALL = """
import pathlib, sys
import tensorflow as tf
import nfp.inference.scoring, nfp.models
from nfp.cli import main

@tf.function
def spin(x):
    return tf.while_loop(lambda i, x: i < 2**62, lambda i, x: (i + 1, tf.tanh(x)), (tf.constant(0, tf.int64), x))[1]

def endless(*args, **kwargs):
    pathlib.Path(sys.argv[1]).write_text("inside")
    return spin(tf.ones((8, 8)))

nfp.models.rollout = nfp.inference.scoring.evaluate_model = endless
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_ctrl_c_inside_one_endless_tensorflow_call_of_predict_or_evaluate_ends_in_one_line(
    command, tiny_overrides, checkpoint, tmp_path
):
    import signal
    import subprocess
    import time

    _noise_npy(tmp_path / "c.npy")
    inside, out = tmp_path / "inside", tmp_path / "out"
    args = {
        "predict": ["--input", f"{tmp_path}/c.npy:1", "--context", "3", "--horizon", "3"],
        "evaluate": ["--split", "test"],
    }[command]
    proc = warm.Process(["-c", _ENDLESS_CALL, str(inside), command, "--model", checkpoint, *args, "--out", str(out),
                         *tiny_overrides, "tracking.enabled=false"])  # fmt: skip
    deadline = time.monotonic() + 120
    while not inside.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the endless call was never reached"
        time.sleep(0.05)
    time.sleep(1)  # well inside the call
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)  # the call never returns: only the interrupt can end the process
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"nfp {command} ignored Ctrl-C inside a long TensorFlow call")
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted"
    assert not out.exists() or not any(out.iterdir())  # nothing half-written
