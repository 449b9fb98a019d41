"""Bad configs and overrides: one line naming the key path and what was expected, exit code 2,
no traceback, and nothing written — no data, no outputs, no MLflow run."""

import pytest

from nfp.cli import main

pytestmark = pytest.mark.no_mlflow_store  # a bad config must not make the store: it does not exist before

BAD_OVERRIDES = [
    ("bogus=1", "bogus: unknown key; allowed: data, model, train"),
    ("train.bogus=1", "train.bogus: unknown key"),
    ("train.schedule.bogus=1", "train.schedule.bogus: unknown key"),
    ("data.frame_sizes=[16,16]", "data.frame_sizes: unknown key, did you mean data.frame_size?"),
    ("model.channels=3", "model.channels: unknown key, did you mean data.channels?"),
    ("train.learningrate=0.1", "train.learningrate: unknown key, did you mean train.learning_rate?"),
    ("data.frame_size=[32,32,3]", "data.frame_size: got [32, 32, 3], expected [H, W] (a frame's height and width; "),
    (
        "data.source=video data.path=/v data.split.test=cam1*",
        "data.split.test: got 'cam1*', expected a fraction, a count or a list of patterns (['cam1*'])",
    ),
    ("train.epochs=ten", "train.epochs: got 'ten', expected an integer"),
    ("train.epochs=2.5", "train.epochs: got 2.5, expected an integer"),
    ("train.epochs=0", "train.epochs: got 0, expected >= 1"),
    ("train.batch_size=0", "train.batch_size: got 0, expected >= 1"),
    ("train.batch_size=-4", "train.batch_size: got -4, expected >= 1"),
    ("train.learning_rate=-0.1", "train.learning_rate: got -0.1, expected >= 0"),
    ("train.learning_rate=fast", "train.learning_rate: got 'fast', expected a number"),
    ("train.learning_rate=.nan", "train.learning_rate: got nan, expected a finite number"),
    ("train.learning_rate=.inf", "train.learning_rate: got inf, expected a finite number"),
    ("data.step_length=-.inf", "data.step_length: got -inf, expected a finite number"),
    ("train.steps_per_epoch=0", "train.steps_per_epoch: got 0, expected >= 1"),
    ("train.verbose=3", "train.verbose: got 3, expected <= 2"),
    (
        "train.mixed_precision='yes please'",
        "train.mixed_precision: got 'yes please', expected one of auto, bfloat16, float16, off",
    ),
    ("train.backup=1", "train.backup: got 1, expected true or false"),
    ("train.jit_compile=maybe", "train.jit_compile: got 'maybe', expected one of auto, on, off"),
    ("train.loss=l1", "train.loss: got 'l1', expected one of auto, bce, mse"),
    (
        "train.loss=bce model.output_activation=linear",
        "train.loss: got bce, expected mse with model.output_activation: linear",
    ),
    ("train.scheduled_sampling=-1", "train.scheduled_sampling: got -1, expected >= 0"),
    (
        "train.scheduled_sampling=100 model.preset=keras_io",
        "train.scheduled_sampling: needs model.cell: nfp (got model.cell: keras, model.preset keras_io sets it)",
    ),
    (
        "train.scheduled_sampling=100 model.cell=keras",
        "train.scheduled_sampling: needs model.cell: nfp (got model.cell: keras, set by the config or an override)",
    ),
    ("train.scheduled_sampling=100 data.protocol=context", "train.scheduled_sampling: needs data.protocol: shift"),
    ("train.optimizer=lion", "train.optimizer: got 'lion', expected one of adam, adamw, sgd"),
    ("model.family=rnn", "model.family: got 'rnn', expected one of convlstm, simvp"),
    ("model.preset=tau model.translator=swin", "model.translator: got 'swin', expected one of gsta, tau"),
    ("model.preset=tau model.spatial_channels=0", "model.spatial_channels: got 0, expected >= 1"),
    ("model.preset=tau model.encoder_blocks=3", "model.encoder_blocks: got 3, expected an even number"),
    ("model.preset=tau model.translator_blocks=1", "model.translator_blocks: got 1, expected >= 2"),
    ("model.preset=tau model.mlp_ratio=1", "model.mlp_ratio: got 1, expected > 1"),
    ("model.preset=tau model.encoder_kernel=4", "model.encoder_kernel: got 4, expected an odd size"),
    ("model.preset=tau model.drop_path=1", "model.drop_path: got 1.0, expected <= 0.99"),
    ("model.preset=tau model.filters=[4]", "model.filters: does not apply to model.family simvp"),
    ("model.preset=tiny model.translator=tau", "model.translator: does not apply to model.family convlstm"),
    ("model.preset=tiny model.family=simvp", "model.family: got simvp, but model.preset tiny is a convlstm preset"),
    ("model.preset=tau data.protocol=shift", "data.protocol: got shift, expected context with model.family simvp"),
    ("model.preset=tau evaluate.context_frames=5", "evaluate.context_frames: got 5, expected >= data.context_frames"),
    (
        "train.schedule.name=onecycle train.schedule.warmup_epochs=1",
        "train.schedule.warmup_epochs: got 1, expected 0 with train.schedule.name: onecycle",
    ),
    (
        "train.schedule.name=linear",
        "train.schedule.name: got 'linear', expected one of constant, step, cosine, plateau",
    ),
    ("train.schedule.gamma=2", "train.schedule.gamma: got 2.0, expected <= 1"),
    ("train.images.every_n_epochs=-1", "train.images.every_n_epochs: got -1, expected >= 0"),
    ("train=3", "train: expected a mapping, got 3"),
    (
        "model.preset=resnet",
        "model.preset: got 'resnet', expected one of tiny, keras_io, convlstm_s, simvp_gsta, tau, simvp_tiny, "
        "tau_tiny, predformer, predformer_tiny, predrnn_v2, predrnn_v2_tiny, custom",
    ),
    ("model.cell=lstm", "model.cell: got 'lstm', expected one of nfp, keras"),
    ("model.patch_size=0", "model.patch_size: got 0, expected >= 1"),
    ("model.patch_size=3", "model.patch_size: got 3, expected a divisor of data.image_size (32)"),
    ("model.filters=[0]", "model.filters[0]: got 0, expected >= 1"),
    ("model.activation=bogus", "model.activation: got 'bogus', expected one of tanh, relu, elu, gelu, silu"),
    ("model.norm=batch", "model.norm: got 'batch', expected none with model.cell: nfp"),
    ("model.dropout=0.2", "model.dropout: got 0.2, expected 0 with model.cell: nfp"),
    ("model.filters=8", "model.filters: got 8, expected a list of int"),
    ("model.filters='[8, x]'", "model.filters[1]: got 'x', expected an integer"),
    ("model.dropout=1", "model.dropout: got 1.0, expected <= 0.99"),
    ("model.norm=group", "model.norm: got 'group', expected one of batch, layer, none"),
    ("data.source=kaggle", "data.source: got 'kaggle', expected one of generate, download"),
    ("data.compression=zstd", "data.compression: got 'zstd', expected one of none, gzip"),
    ("data.layout=NCHW", "data.layout: got 'NCHW', expected one of TNHW, NTHW, TNHWC, NTHWC"),
    ("data.layout=tnhw", "data.layout: got 'tnhw', expected one of TNHW, NTHW"),
    ("data.frame_size=[32]", "data.frame_size: got [32], expected [H, W]"),
    ("data.frame_size=[32,4]", "data.frame_size[1]: got 4, expected >= 8"),
    ("data.channels=2", "data.channels: got 2, expected 1 (grey) or 3 (RGB)"),
    ("data.source=video", "data.path: empty, expected the files of data.source: video (a directory, a glob or a list)"),
    ("data.path=/videos", "data.path: set, but data.source is generate; expected data.source: video, frames or arrays"),
    ("data.source=video data.path=/v data.clip_stride=0", "data.clip_stride: got 0, expected >= 1"),
    ("data.source=video data.path=/v data.frame_step=0", "data.frame_step: got 0, expected >= 1"),
    ("data.on_bad_file=ignore", "data.on_bad_file: got 'ignore', expected one of error, skip"),
    ("data.prepare_processes=-1", "data.prepare_processes: got -1, expected >= 0"),
    ("data.background=clouds", "data.background: got 'clouds', expected one of none, photos"),
    (
        "data.background=photos data.source=download",
        "data.background: got photos, expected none with data.source: download (backgrounds are drawn by generate)",
    ),
    (
        "data.split.test=[x*]",
        "data.split: name patterns split files, expected fractions or counts with data.source: generate",
    ),
    (
        "data.source=video data.path=/v data.split.test=[x*] data.split.val=0.5",
        "data.split.val: got 0.5 beside name patterns, expected a list of patterns (or leave it out)",
    ),
    (
        "data.source=video data.path=/v data.split.test=[] data.split.val=[]",
        "data.split: name patterns are all empty, expected patterns of the val or test files",
    ),
    (
        "data.frame_size=[32,30] model.patch_size=4",
        "model.patch_size: got 4, expected a divisor of data.frame_size (32×30)",
    ),
    ("data.frames=1", "data.frames: got 1, expected >= 2"),
    ("data.num_clips=0", "data.num_clips: got 0, expected >= 1"),
    ("data.dir=''", "data.dir: got None, expected a non-empty string"),
    ("data.split.train=0.9", "data.split: fractions sum to 1.1, expected 1"),
    ("data.split.train=800 data.split.val=0.5", "data.split: mixes counts and fractions"),
    ("data.digit_size=40", "data.digit_size: got 40, expected <= data.image_size (32)"),
    ("data.allowed_schemes=[ftp]", "data.allowed_schemes: got 'ftp', expected http, https, gs or file"),
    (
        "data.protocol=context data.context_frames=15 data.predict_frames=10",
        "data.context_frames + data.predict_frames: got 15+10, expected <= data.frames (20)",
    ),
    ("evaluate.context_frames=20", "evaluate.context_frames: got 20, expected < data.frames (20)"),
    (
        "evaluate.predict_frames=11",
        "evaluate.context_frames + evaluate.predict_frames: got 10+11, expected <= data.frames (20)",
    ),
    ("evaluate.split=dev", "evaluate.split: got 'dev', expected one of train, val, test"),
    (
        "model.preset=custom model.filters=[4,4] model.kernel_sizes=[3]",
        "model.kernel_sizes: got 1 sizes for 2 filters, expected one per layer",
    ),
    (
        "model.preset=convlstm_s model.filters=[64,64]",
        "model.kernel_sizes: got 4 sizes for 2 filters, expected one per layer (set both to change the depth of model.preset convlstm_s)",
    ),
    (
        "model.preset=custom model.filters=[] model.kernel_sizes=[]",
        "model.filters: empty, expected at least one ConvLSTM layer",
    ),
    (
        "distribute.strategy=horovod",
        "distribute.strategy: got 'horovod', expected one of auto, default, mirrored, multi_worker",
    ),
    ("tracking.experiment=''", "tracking.experiment: got None, expected a non-empty string"),
    ("tracking.alias=champion", "tracking.alias: got 'champion', needs tracking.register_as"),
    ("tracking.register_as=nfp tracking.alias=v2", "tracking.alias: got 'v2', expected letters, digits, _ and -"),
    ("train.epochs.max=3", "train.epochs: is a value, cannot set train.epochs.max"),
    ("train.epochs", "override 'train.epochs': expected key.path=value"),
]

BAD_FILES = [
    ("", "empty, expected a mapping of sections"),
    ("train: [1, 2\n", "not valid YAML at line"),
    ("- train\n- model\n", "expected a mapping of sections, got list"),
    ("data: {frames: 20}\nmodell: {preset: tiny}\n", "modell: unknown key"),
    ("train:\n  epochs: 0\n", "train.epochs: got 0, expected >= 1"),
    ("train:\n  epochs: 3\n  epochs: 4\n", "key 'epochs' given twice (line 3), expected once"),
    ("train: {epochs: 3}\ntrain: {epochs: 4}\n", "key 'train' given twice (line 2), expected once"),
    (
        "data: {image_size: 32, frame_size: [32, 24]}\n",
        "data.frame_size and data.image_size: both set ([32, 24] and 32)",
    ),
]


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def _assert_refused(argv, expected, capsys, empty_cwd, mlflow_db):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert "Traceback" not in err
    assert list(empty_cwd.iterdir()) == [], "nothing may be written on a bad config"
    assert not mlflow_db.exists(), "no MLflow run on a bad config"


@pytest.mark.parametrize("overrides, expected", BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_bad_override_is_refused_before_any_work(overrides, expected, capsys, empty_cwd, isolated_mlflow):
    quickstart = str(__import__("pathlib").Path(__file__).parents[1] / "configs/quickstart.yaml")
    _assert_refused(
        ["train", "--config", quickstart, "--overrides", overrides], expected, capsys, empty_cwd, isolated_mlflow
    )


@pytest.mark.parametrize("text, expected", BAD_FILES, ids=[e for _, e in BAD_FILES])
def test_bad_config_file_is_refused_before_any_work(text, expected, capsys, empty_cwd, isolated_mlflow, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    _assert_refused(["train", "--config", str(path)], expected, capsys, empty_cwd, isolated_mlflow)


# Sizes the config allows but no machine can prepare: refused by `nfp prepare` from an estimate, before any work.
TOO_BIG = [
    ("data.num_clips=1000000000", "data.num_clips: preparing "),
    ("data.image_size=1000000", "data.image_size, data.frames: preparing "),
    ("data.frames=100000000", "data.image_size, data.frames: preparing "),
    ("data.frame_size=[100000,100000]", "data.frame_size, data.frames: preparing "),
]


@pytest.mark.parametrize("overrides, expected", TOO_BIG, ids=[o for o, _ in TOO_BIG])
def test_a_size_prepare_cannot_fit_is_refused_before_any_work(overrides, expected, capsys, empty_cwd, isolated_mlflow):
    quickstart = str(__import__("pathlib").Path(__file__).parents[1] / "configs/quickstart.yaml")
    _assert_refused(
        ["prepare", "--config", quickstart, "--overrides", overrides], expected, capsys, empty_cwd, isolated_mlflow
    )


def test_a_binary_config_file_is_refused_as_not_utf8(capsys, empty_cwd, isolated_mlflow, tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"PK\x03\x04\x14\x00\x00\x00\x08\x00\xff\xfe binary junk")
    _assert_refused(
        ["train", "--config", str(path)], "model.keras: not UTF-8 text (byte 10)", capsys, empty_cwd, isolated_mlflow
    )


def test_missing_config_file_is_named(capsys, empty_cwd, isolated_mlflow):
    _assert_refused(
        ["train", "--config", "nowhere/cfg.yaml"],
        "config file nowhere/cfg.yaml: not found",
        capsys,
        empty_cwd,
        isolated_mlflow,
    )


def test_at_least_thirty_bad_configs_are_covered():
    assert len(BAD_OVERRIDES) + len(BAD_FILES) + len(TOO_BIG) + 1 >= 30
