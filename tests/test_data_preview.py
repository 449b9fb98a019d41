"""Data preview: prepare draws each split's first clips next to the manifest, `nfp preview` on demand, train logs it."""

from pathlib import Path

import pytest
from PIL import Image

from nfp import visualize
from nfp.cli import main
from nfp.config import load_config
from nfp.data.prepare import prepare


def _size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def _frames(path) -> int:
    with Image.open(path) as image:
        return image.n_frames


@pytest.fixture
def cfg(tiny_overrides):
    return load_config(None, [*tiny_overrides, "tracking.enabled=false"])  # 24 clips of 6 × 16×16: 20 / 2 / 2


def test_prepare_writes_a_labelled_preview_of_every_split_next_to_the_manifest(cfg):
    prepare(cfg.data, progress=False)
    data = Path(cfg.data.dir)
    scale = 64 // 16  # 16-px frames drawn 4× so digits are readable
    rows = 3 + 2 + 2  # up to 3 clips per split: train 3, val 2, test 2
    assert _size(data / "preview.png") == (visualize.LABEL_PX + 6 * (16 * scale + 2) - 2, rows * (16 * scale + 2) - 2)
    assert _size(data / "preview.gif") == (16 * scale, (16 + 2) * scale) and _frames(data / "preview.gif") == 6
    assert visualize.frame_scale(64) == 1 and visualize.frame_scale(28) == 3


def test_previews_are_identical_across_reruns_and_commands(cfg, tmp_path, capsys):
    prepare(cfg.data, progress=False)
    data = Path(cfg.data.dir)
    first = {name: (data / name).read_bytes() for name in ("preview.png", "preview.gif")}
    prepare(cfg.data, progress=False)
    assert {name: (data / name).read_bytes() for name in first} == first
    out = tmp_path / "look"
    assert (
        main(["preview", f"data.dir={cfg.data.dir}", *_overrides(cfg), "--out", str(out)]) == 0
    )  # read from the shards
    assert {name: (out / name).read_bytes() for name in first} == first
    assert f"png: {out / 'preview.png'}" in capsys.readouterr().out


def test_preview_of_one_split_and_a_clip_count(cfg, tmp_path):
    out = tmp_path / "look"
    assert main(["preview", *_overrides(cfg), "--split", "train", "--clips", "5", "--out", str(out)]) == 0
    assert _size(out / "preview.png")[1] == 5 * (64 + 2) - 2
    assert (Path(cfg.data.dir) / "manifest.json").is_file()  # it prepared the data it needed


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--split", "dev"], "argument --split: invalid choice: 'dev' (choose from "),  # the choices' quoting varies
        (["--clips", "0"], "argument --clips: got 0, expected a whole number >= 1"),
        (["--clips", "many"], "argument --clips: got 'many', expected a whole number >= 1"),
    ],
)
def test_a_bad_split_or_clip_count_is_refused_by_the_parser_before_any_data_work(cfg, flags, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["preview", *_overrides(cfg), *flags])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]  # after argparse's usage lines
    assert error.startswith(f"nfp preview: error: {expected}"), error
    assert not Path(cfg.data.dir).exists()


def test_a_split_without_clips_is_named(cfg, tmp_path, capsys):
    overrides = [*_overrides(cfg), "data.split.train=20", "data.split.val=4", "data.split.test=0"]
    assert main(["preview", *overrides, "--split", "test"]) == 2
    assert "--split: split 'test' of" in capsys.readouterr().err


def test_training_logs_the_preview_once_not_again_on_resume(tiny_overrides, monkeypatch):
    from nfp import tracking
    from nfp.training.train import train

    logged = []
    real = tracking.Online.log_artifact
    monkeypatch.setattr(tracking.Online, "log_artifact", lambda self, path, folder=None: (
        logged.append(f"{folder}/{Path(path).name}"), real(self, path, folder)))  # fmt: skip
    overrides = [*tiny_overrides, "train.images.every_n_epochs=0", "tracking.log_model=false"]
    train(load_config(None, [*overrides, "train.epochs=1"]))
    assert {"data/preview.png", "data/preview.gif"} <= set(logged)
    logged.clear()
    train(load_config(None, [*overrides, "train.epochs=2"]))  # resumes the same run after epoch 1
    assert not [name for name in logged if "preview" in name] and logged  # it logged other things, not the preview


def _overrides(cfg) -> list[str]:
    c = cfg.data
    return [f"data.image_size={c.image_size}", f"data.digit_size={c.digit_size}", f"data.frames={c.frames}",
            f"data.num_clips={c.num_clips}", f"data.num_shards={c.num_shards}", f"data.dir={c.dir}",
            f"train.output_dir={cfg.train.output_dir}", "evaluate.context_frames=3", "evaluate.predict_frames=3",
            "tracking.enabled=false"]  # fmt: skip


def test_mlflow_run_preview_entry_point_logs_the_pictures_into_its_run(cfg, tmp_path):
    import os
    import sys

    import mlflow
    import warm

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/project.db",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")  # fmt: skip
    overrides = " ".join(o for o in _overrides(cfg) if o != "tracking.enabled=false")
    # `mlflow run` and its entry point's `python -m nfp preview` as forks of the warm Python (tests/warm.py)
    argv = ["-m", "mlflow", "run", str(repo), "-e", "preview", "--env-manager", "local", "-P", "split=val", "-P",
            "clips=2"]  # fmt: skip
    proc = warm.run([*argv, "-P", f"overrides={overrides}"], cwd=repo, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "data")) == [
        "data/preview.gif",
        "data/preview.png",
    ]
