"""`nfp doctor`: the preflight a launch script runs on a new GPU VM, checked on the CPU with a GPU's choices forced."""

import re

import keras
import mlflow
import pytest

from nfp.cli import main
from nfp.config import load_config
from nfp.models.convlstm import layers

SHRUNK = [
    "data.image_size=16",
    "data.digit_size=8",
    "data.frames=6",
    "model.filters=[4, 4]",
    "model.kernel_sizes=[3, 3]",
    "train.batch_size=2",
    "evaluate.context_frames=3",
    "evaluate.predict_frames=3",
]


@pytest.fixture
def host(monkeypatch):
    monkeypatch.setenv("NFP_HOST", "vm-under-test")
    return "vm-under-test"


def test_doctor_reports_devices_choices_speed_memory_and_utilisation_in_a_few_lines(tmp_path, host, capsys):
    out = tmp_path / "out"
    args = ["doctor", "--config", "configs/multi_gpu.yaml", "--steps", "4", *SHRUNK, f"train.output_dir={out}",
            "train.jit_compile=on", "train.mixed_precision=bfloat16"]  # fmt: skip
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == (out / "doctor" / f"{host}.txt").read_text().strip().splitlines()  # what train will log
    assert len(lines) == 7
    assert lines[0] == f"doctor on {host}: 1x CPU"
    assert lines[1].startswith("choices: 1x CPU: precision mixed_bfloat16, XLA cell")  # multi_gpu.yaml is mirrored
    assert lines[2] == "strategy: MirroredStrategy, 1 replica(s)"
    assert re.fullmatch(r"first step \(trace \+ compile\): \d+\.\d s", lines[3])
    assert re.fullmatch(r"step: [\d.]+ ms \(median of 3\), [\d.]+ clips/s, [\d.]+ clips/s per device", lines[4])
    assert re.fullmatch(r"peak memory \(host RSS\): [\d.]+ GiB", lines[5])
    assert re.fullmatch(
        r"model FLOP utilisation: [\d.]+% \([\d.]+ of [\d.]+ TFLOP/s per device nominal CPU peak, [\d.]+ GFLOP per clip\)",
        lines[6],
    )
    assert not (tmp_path / "data").exists()  # random clips: no data prepared or downloaded


@pytest.mark.slow
def test_train_logs_the_doctors_reports_to_its_run(tiny_overrides, tmp_path, host):
    from nfp.training.train import train

    assert main(["doctor", "--steps", "2", *tiny_overrides]) == 0
    summary = train(load_config(None, [*tiny_overrides, "train.epochs=1", "tracking.log_model=false"]))
    client = mlflow.MlflowClient()
    assert [a.path for a in client.list_artifacts(summary["run_id"], "doctor")] == [f"doctor/{host}.txt"]


def test_out_of_memory_is_one_line_naming_the_batch_and_the_key_to_lower(tmp_path, host, monkeypatch, capsys):
    import tensorflow as tf

    def fit_until_oom(self, *args, callbacks=(), **kwargs):
        for batch in range(2):
            for c in callbacks:
                c.on_train_batch_begin(batch)
                c.on_train_batch_end(batch)
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape [2,4,4,4,64]")

    monkeypatch.setattr(keras.Model, "fit", fit_until_oom)
    assert main(["doctor", *SHRUNK, f"train.output_dir={tmp_path}/out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(r"error: out of memory at batch 3 \(2 clips per device of .*\): lower train.batch_size .*", err)
    assert not (tmp_path / "out" / "doctor").exists()  # no report pretending all is well


def test_a_model_xla_cannot_compile_is_named_in_one_line(tmp_path, host, monkeypatch, capsys):
    monkeypatch.setattr(
        layers, "time_loop", lambda step, c, xs: keras.ops.scan(lambda a, x: (step(a, x),) * 2, c, xs)[1]
    )
    assert main(["doctor", *SHRUNK, "train.jit_compile=on", f"train.output_dir={tmp_path}/out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: train.jit_compile: on, but XLA cannot compile the model (")


def test_a_first_step_that_fails_under_the_chosen_policy_says_so(tmp_path, host, monkeypatch, capsys):
    import tensorflow as tf

    def fit_fails(self, *args, **kwargs):
        raise tf.errors.InvalidArgumentError(None, None, "No registered 'Conv2D' OpKernel for 'CPU' with T=DT_HALF")

    monkeypatch.setattr(keras.Model, "fit", fit_fails)
    assert main(["doctor", *SHRUNK, "train.mixed_precision=float16", f"train.output_dir={tmp_path}/out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: the first step failed under precision mixed_float16, XLA off (No registered 'Conv2D'")
    assert "train.mixed_precision=off" in err


def test_a_strategy_that_cannot_be_made_is_one_line(tmp_path, host, capsys):
    assert main(["doctor", *SHRUNK, "distribute.strategy=mirrored", "distribute.devices=['/gpu:3']"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: distribute.devices[0]: got '/gpu:3'")


def test_doctor_checks_this_vms_devices_only_under_a_multi_worker_config(tmp_path, host, monkeypatch, capsys):
    """Each VM of a multi-worker job checks its own GPUs before it joins: Mirrored, whatever TF_CONFIG says."""
    monkeypatch.setenv(
        "TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}}'
    )
    assert (
        main(["doctor", "--config", "configs/multi_node.yaml", "--steps", "2", *SHRUNK, f"train.output_dir={tmp_path}"])
        == 0
    )
    assert "strategy: MirroredStrategy, 1 replica(s)" in capsys.readouterr().out


def test_too_few_steps_is_refused(capsys):
    assert main(["doctor", "--steps", "1"]) == 2
    assert "--steps: got 1, expected >= 2" in capsys.readouterr().err
