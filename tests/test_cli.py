"""The `nfp` command: every subcommand has --help, bad input is one line and exit code 2."""

import subprocess
import sys

import pytest
import warm

from nfp.cli import main


@pytest.mark.parametrize("command", ["prepare", "preview", "train", "evaluate", "predict", "config", "tf-config"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: nfp " + command in capsys.readouterr().out


def test_bad_override_is_one_line_exit_2_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "nfp", "train", "--config", "configs/quickstart.yaml", "train.epochs=-1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: train.epochs: got -1, expected >= 1"


def test_overrides_string_is_shell_split_like_mlproject_passes_it(capsys):
    assert (
        main(["config", "--config", "configs/quickstart.yaml", "--overrides", "train.epochs=7 model.filters='[4, 4]'"])
        == 0
    )
    out = capsys.readouterr().out
    assert "epochs: 7" in out and "- 4\n  - 4" in out


def test_debug_shows_the_traceback():
    from nfp.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["--debug", "config", "train.epochs=0"])


def test_version_is_printed(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == f"nfp {version('nfp')}\n"


def test_a_plain_install_brings_tensorflow():
    """`pip install nfp` must run every command: TensorFlow is a base dependency, the gpu extra only adds CUDA."""
    from importlib.metadata import requires

    base = [r for r in requires("nfp") if "extra ==" not in r]
    assert any(r.startswith("tensorflow") for r in base), base


def test_evaluate_refuses_an_unknown_split_naming_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--model", str(tmp_path / "m.keras"), "--split", "dev"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]  # after argparse's usage lines
    assert error.startswith("nfp evaluate: error: argument --split: invalid choice: 'dev' (choose from "), error


@pytest.mark.parametrize("command", ["train", "predict", "evaluate", "preview"])
def test_an_output_dir_that_cannot_be_made_is_one_line_before_any_work(command, tiny_overrides, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # nothing can be made under a file, even as root
    if command == "train":
        argv = ["train", *tiny_overrides, f"train.output_dir={blocker}/out", "tracking.enabled=false"]
        expected = f"error: train.output_dir: cannot write to {blocker}/out (Not a directory"
    else:
        model = ["--model", str(tmp_path / "m.keras")] if command in ("predict", "evaluate") else []
        argv = [command, *model, "--out", f"{blocker}/out", *tiny_overrides, "tracking.enabled=false"]
        expected = f"error: --out: cannot write to {blocker}/out (Not a directory: {blocker})"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1, err
    assert not (tmp_path / "data").exists()  # refused before any data work


@pytest.mark.slow
def test_train_on_a_cpu_is_quiet_and_logs_a_line_per_epoch_to_a_pipe(tiny_overrides):
    """No TF start-up noise on a machine without a GPU, no progress-bar escapes in a redirected log; --debug shows all."""
    import os

    overrides = [o for o in tiny_overrides if not o.startswith("train.verbose")] + ["tracking.enabled=false"]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-m", "nfp", "train", *overrides], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    if not os.path.exists("/dev/nvidia0"):
        noise = [
            line
            for line in done.stderr.splitlines()
            if line.startswith(("E0000", "W0000", "I0000", "WARNING: All log"))
        ]
        assert noise == [], noise
    assert "\x1b[" not in done.stdout and "\b" not in done.stdout  # verbose 2 on a pipe: plain lines
    assert sum(line.startswith("Epoch ") for line in done.stdout.splitlines()) == 2


# --------------------------------------------------------------------------- outputs checked before the work
def test_an_unwritable_doctor_report_is_one_line_before_any_step(tmp_path, capsys, monkeypatch):
    import nfp.training.train

    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("x")
    monkeypatch.setattr(nfp.training.train, "compiled_model", lambda *a, **k: pytest.fail("a step ran"))
    assert main(["doctor", "--out", str(not_a_dir / "x.txt"), "--steps", "3"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"error: --out: cannot write to {not_a_dir} (Not a directory: {not_a_dir})"


def test_demo_videos_refuse_a_file_as_out_and_write_again_over_an_earlier_run(tmp_path, capsys):
    import av

    def frames_of(path) -> int:
        with av.open(str(path)) as container:
            return sum(1 for _ in container.decode(video=0))

    small = ["data.frame_size=[32,32]"]
    (tmp_path / "file").write_text("x")
    assert main(["demo-videos", "--out", str(tmp_path / "file"), *small]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: --out: cannot write to {tmp_path / 'file'} (")

    out = tmp_path / "demo"
    assert main(["demo-videos", "--out", str(out), "--videos", "3", "--frames", "6", *small]) == 0
    capsys.readouterr()
    assert main(["demo-videos", "--out", str(out), "--videos", "2", "--frames", "4", *small]) == 0
    said = capsys.readouterr().out.strip().splitlines()
    assert [frames_of(out / f"demo_00{i}.mp4") for i in range(3)] == [4, 4, 6]  # written again, not kept
    assert said == [
        f"wrote 2 videos to {out}",
        f"note: {out} also holds 1 demo video(s) of an earlier run (demo_002.mp4): data.path reads them too; "
        "delete them to keep only these",
    ]


def test_a_warning_is_one_line_without_pythons_source_line(tmp_path):
    from media import moving_shapes, write_video

    folder = tmp_path / "videos"
    write_video(folder / "good.mp4", moving_shapes(12, 16, 16))
    (folder / "bad.mp4").write_bytes(b"not a video" * 100)
    proc = warm.run(
        ["-m", "nfp", "prepare", "data.source=video", f"data.path={folder}", f"data.dir={tmp_path}/d",
         "data.frames=6", "data.image_size=16", "data.on_bad_file=skip", "data.split={train: 1.0, val: 0.0, test: 0.0}",
         "evaluate.context_frames=3", "evaluate.predict_frames=3"],
        timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [x.rpartition("warning: ")[2] for x in proc.stderr.splitlines() if "bad.mp4" in x]  # past tqdm's \r
    assert line.startswith("video ") and "bad.mp4: skipped, " in line
    assert "UserWarning" not in proc.stderr and "warnings.warn" not in proc.stderr


def test_demo_videos_are_refused_only_by_the_keys_they_use(tmp_path, capsys):
    """The frame size and seed: a model.patch_size that does not divide the frames, or the generator's digit size,
    are for other commands."""
    out = tmp_path / "demo"
    args = ["demo-videos", "--out", str(out), "--videos", "1", "--frames", "4", "data.frame_size=[16,16]"]
    assert main([*args, "model.patch_size=5"]) == 0, capsys.readouterr().err
    assert (out / "demo_000.mp4").is_file()
    capsys.readouterr()
    assert main([*args, "data.seed=-1"]) == 2
    assert capsys.readouterr().err.startswith("error: data.seed: got -1")
