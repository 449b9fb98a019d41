"""The schema: every knob, its type, default, bounds and help, as a tree of frozen dataclasses."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

MOVING_MNIST_URL = "http://www.cs.toronto.edu/~nitish/unsupervised_video/mnist_test_seq.npy"


def _knob(default, *, min=None, max=None, help=""):
    """A dataclass field with bounds the validator enforces."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"min": min, "max": max, "help": help})
    return field(default=default, metadata={"min": min, "max": max, "help": help})


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class SplitConfig:
    """Fractions (summing to 1) or counts of each split: of clips (generate, download) or of videos (video, frames,
    arrays: every clip of a video goes to its video's split); or, for those sources, lists of name patterns
    (fnmatch, on a file's path under data.path, e.g. KTH's ["person2[2-5]_*"]): the files they match, the rest
    train."""

    train: float | list[str] = _knob(0.8, min=0)
    val: float | list[str] = _knob(0.1, min=0)
    test: float | list[str] = _knob(0.1, min=0)

    def are_counts(self) -> bool:
        """Counts, not fractions: a value above 1, or whole numbers summing to more than 1 ({train: 3, val: 1,
        test: 1}, or {1, 1, 1} videos)."""
        values = [self.train, self.val, self.test]
        if any(isinstance(v, list) for v in values):
            return False
        return any(v > 1 for v in values) or (all(float(v).is_integer() for v in values) and sum(values) > 1)

    def patterns(self) -> dict[str, list[str]] | None:
        """{split: patterns} when the split is given by name patterns, else None."""
        given = {name: getattr(self, name) for name in ("train", "val", "test")}
        if not any(isinstance(v, list) for v in given.values()):
            return None
        return {name: v if isinstance(v, list) else [] for name, v in given.items()}


FILE_SOURCES = ("video", "frames", "arrays")  # sources that read the user's own files from data.path


@dataclass(frozen=True)
class DataConfig:
    source: Literal["generate", "download", "video", "frames", "arrays"] = _knob(
        "generate", help="generate/download: Moving MNIST; video: video files (PyAV); frames: folders of PNG/JPEG "
        "frames, one per clip or video (Pillow); arrays: .npy/.npz files in data.layout",
    )  # fmt: skip
    # video, frames, arrays: your own files
    path: list[str] = _knob(
        [], help="a directory, a glob or a list of them, local or any fsspec URL (gs://…): the files of "
        "data.source video/frames/arrays",
    )  # fmt: skip
    clip_stride: int | None = _knob(None, min=1, help="a clip starts every this many (kept) frames; default: "
                                    "data.frames (clips side by side, no overlap)")  # fmt: skip
    frame_step: int = _knob(1, min=1, help="keep every n-th frame of a video (temporal subsampling)")
    on_bad_file: Literal["error", "skip"] = _knob(
        "error", help="a file that cannot be read or cut into a clip: stop with one line naming it, or skip it "
        "(listed with why in the manifest and the run)",
    )  # fmt: skip
    prepare_processes: int = _knob(0, min=0, help="processes decoding files in prepare; 0 = one per CPU core")
    # download: any fsspec URL (http(s)://, gs://, file://, local path) of mnist_test_seq.npy
    url: str = MOVING_MNIST_URL
    sha256: str | None = None  # None: use the built-in table for known URLs, else unverified
    size_bytes: int | None = _knob(None, min=1)
    allowed_schemes: list[str] = _knob(["http", "https", "gs", "file"])
    cache_dir: str = "~/.cache/nfp"
    layout: Literal["TNHW", "NTHW", "TNHWC", "NTHWC"] = _knob(
        "TNHW",
        help="axes of a data.url, data.source=arrays or predict --input .npy/.npz: TNHW (time, clips, H, W) as "
        "mnist_test_seq.npy, NTHW (clips, time, H, W), or either with a last channel axis C (1 or 3)",
    )
    # generate: OpenSTL's Moving MNIST recipe
    digit_bank: Literal["sklearn", "mnist"] = "sklearn"
    num_clips: int = _knob(10000, min=1, help="clips to generate, or to take from the download")
    frames: int = _knob(20, min=2)
    image_size: int = _knob(64, min=8, help="square frames: the shorthand for data.frame_size [image_size, image_size]")
    frame_size: list[int] | None = _knob(
        None,
        min=8,
        help="[H, W] of every frame; default [image_size, image_size]. "
        "Your own files are resized to cover it (aspect kept) and centre-cropped",
    )
    channels: int = _knob(1, min=1, max=3, help="1: grey (colour converted), 3: RGB (grey repeated)")
    background: Literal["none", "photos"] = _knob(
        "none", help="generate: digits over black, or over moving crops of scikit-learn's colour sample photos "
        "(OpenSTL's MNIST over CIFAR, offline; with data.channels=3 for colour)",
    )  # fmt: skip
    digit_size: int = _knob(28, min=2)
    digits_per_clip: int = _knob(2, min=1)
    step_length: float = _knob(0.1, min=0)
    seed: int = _knob(0, min=0)
    split: SplitConfig = field(default_factory=SplitConfig)
    # shards (local dir or gs://bucket/prefix)
    dir: str = "data/moving_mnist"
    overwrite: bool = _knob(False, help="replace a data.dir that holds other clips (another source, seed, size, …)")
    num_shards: int = _knob(0, min=0, help="shards of the train split; 0 = from shard_mb and num_workers")
    shard_mb: float = _knob(100.0, min=0.001)
    num_workers: int = _knob(1, min=1, help="reading hosts the shards must feed (>= 10 shards each)")
    compression: Literal["none", "gzip"] = "none"
    stage: bool = False  # copy gs:// shards to stage_dir through gcsfs before reading
    stage_dir: str = "~/.cache/nfp/staged"
    # pipeline
    protocol: Literal["shift", "context"] = "shift"  # shift: 0..T-2 -> 1..T-1; context: k -> next n
    context_frames: int = _knob(10, min=1)
    predict_frames: int = _knob(10, min=1)
    shuffle_buffer: int = _knob(256, min=0)
    read_buffer_kb: int = _knob(
        256,
        min=0,
        help="TFRecord read buffer; 0 = unbuffered, one copy fewer per record "
        "(≈10% of the pipeline's CPU) on local disk, but a round trip per read on NFS/gcsfuse/gs://",
    )
    cache: bool = _knob(False, help="keep the decoded clips in RAM after the first pass (the split must fit)")
    service_address: str | None = None  # tf.data service dispatcher, e.g. grpc://host:5050

    @property
    def frame_hw(self) -> tuple[int, int]:
        """(H, W) of every frame: data.frame_size, else the square data.image_size."""
        return tuple(self.frame_size) if self.frame_size is not None else (self.image_size, self.image_size)

    @property
    def frame_hw_key(self) -> tuple[str, str]:
        """(key, value) that sets H and W, for messages: ("data.frame_size", "16×24") or ("data.image_size", "64")."""
        if self.frame_size is not None:
            return "data.frame_size", "×".join(map(str, self.frame_size))
        return "data.image_size", str(self.image_size)

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the frames this config prepares."""
        return (*self.frame_hw, self.channels)


# --------------------------------------------------------------------------- model
# Presets belong to their family (nfp/models/<family>/__init__.py PRESETS): a bundle of model keys that fills every
# key the config does not set (keys you set win), and for some a training recipe (train keys, likewise). The Literal
# below names them all, and `custom` (tests/test_families.py holds it to the families' lists).


@dataclass(frozen=True)
class ModelConfig:
    # The defaults below are `custom`'s starting point; any other preset overrides them. A preset implies its family.
    preset: Literal[
        "tiny", "keras_io", "convlstm_s", "simvp_gsta", "tau", "simvp_tiny", "tau_tiny", "predformer",
        "predformer_tiny", "predrnn_v2", "predrnn_v2_tiny", "custom",
    ] = _knob(
        "tiny", help="a bundle of model keys (and for simvp and predformer presets their papers' recipe: train keys) "
        "that fills every key the config leaves unset; custom: none",
    )  # fmt: skip
    family: Literal["convlstm", "simvp", "predformer", "predrnn"] = _knob(
        "convlstm", help="convlstm, predrnn: autoregressive (output t predicts frame t+1); simvp, predformer: direct "
        "(data.context_frames in, data.predict_frames out at once; data.protocol context)",
    )  # fmt: skip
    # --- convlstm (filters, kernel_sizes and patch_size also predrnn's)
    # nfp: nfp.models.convlstm.layers.ConvLSTMStack (OpenSTL's cell, float32 cell state, scheduled sampling);
    # keras: keras.layers.ConvLSTM2D layers with normalisation between them and a causal Conv3D head
    cell: Literal["nfp", "keras"] = "nfp"
    filters: list[int] = _knob([16, 16], min=1, help="hidden channels per recurrent layer")
    kernel_sizes: list[int] = _knob([3, 3], min=1)
    patch_size: int = _knob(
        1, min=1, help="p: frames become (H/p)×(W/p) grids of p·p channels before the stack (predformer: of tokens)"
    )
    activation: Literal["tanh", "relu", "elu", "gelu", "silu"] = "tanh"
    norm: Literal["batch", "layer", "none"] = "none"  # keras cell only: between recurrent layers
    dropout: float = _knob(0.0, min=0, max=0.99)  # keras cell only
    # --- every family
    output_activation: Literal["sigmoid", "linear"] = "sigmoid"
    # --- simvp (OpenSTL's SimVP_Model; its names in brackets; defaults: its constructor's)
    translator: Literal["gsta", "tau"] = _knob(
        "gsta", help="gsta: gated spatiotemporal attention (SimVP v2); tau: temporal attention unit (TAU, trained "
        "with its differential divergence regularisation)",
    )  # fmt: skip
    spatial_channels: int = _knob(16, min=1, help="encoder/decoder channels (hid_S)")
    temporal_channels: int = _knob(256, min=1, help="translator channels (hid_T)")
    encoder_blocks: int = _knob(
        4, min=2, help="conv blocks of the encoder and decoder, every second one stride 2 (N_S)"
    )
    translator_blocks: int = _knob(4, min=2, help="translator blocks (N_T)")
    encoder_kernel: int = _knob(3, min=1, help="encoder conv kernel (spatio_kernel_enc)")
    decoder_kernel: int = _knob(3, min=1, help="decoder conv kernel (spatio_kernel_dec)")
    mlp_ratio: float = _knob(8.0, min=0, help="translator MLP width / its channels, > 1 (predformer: SwiGLU width / "
                             "model.width)")  # fmt: skip
    drop_path: float = _knob(0.0, min=0, max=0.99, help="stochastic depth, rising linearly over translator blocks "
                             "(predformer: the same rate in every transformer layer)")  # fmt: skip
    # --- predrnn (OpenSTL's PredRNNv2; its names in brackets); also filters, kernel_sizes, patch_size
    decouple_beta: float = _knob(0.1, min=0, help="weight of the decoupling loss (decouple_beta)")
    reverse_sampling: list[int] = _knob(
        [25000, 50000], min=0, help="[start, end] training steps of reverse scheduled sampling (r_sampling_step_1, _2)"
    )
    reverse_sampling_alpha: float = _knob(5000.0, min=1, help="its context steps' exponential rise (r_exp_alpha)")
    # --- predformer (PredFormer's Quadruplet-TSST; its names in brackets); also patch_size, mlp_ratio, drop_path
    width: int = _knob(256, min=1, help="token width (dim)")
    heads: int = _knob(8, min=1, help="attention heads; width / heads per head (dim_head)")
    blocks: int = _knob(6, min=1, help="blocks of four gated transformers: time, space, space, time (Ndepth)")


# --------------------------------------------------------------------------- train
@dataclass(frozen=True)
class ScheduleConfig:
    name: Literal["constant", "step", "cosine", "plateau", "onecycle"] = _knob(
        "constant", help="onecycle: PyTorch's OneCycleLR as OpenSTL trains SimVP/TAU (per step, up to "
        "train.learning_rate over the first 30% of train.epochs, then cosine down to it / 2.5e5)",
    )  # fmt: skip
    warmup_epochs: int = _knob(0, min=0, help="linear warm-up, moved every step, over this many epochs")
    step_epochs: int = _knob(10, min=1, help="step: decay every this many epochs")
    gamma: float = _knob(0.5, min=0, max=1)
    min_lr: float = _knob(0.0, min=0)
    patience: int = _knob(3, min=1, help="plateau: epochs without improvement")


@dataclass(frozen=True)
class CheckpointConfig:
    save_best: bool = True
    save_last: bool = True
    monitor: str = "val_loss"


@dataclass(frozen=True)
class EarlyStoppingConfig:
    enabled: bool = False
    patience: int = _knob(5, min=1)
    monitor: str = "val_loss"


@dataclass(frozen=True)
class ImagesConfig:
    every_n_epochs: int = _knob(1, min=0, help="0 disables prediction strips")
    num_clips: int = _knob(3, min=1)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _knob(10, min=1)
    batch_size: int = _knob(8, min=1, help="per replica")
    steps_per_epoch: int | None = _knob(None, min=1)
    validation_steps: int | None = _knob(None, min=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float | None = _knob(
        None, min=0, help="decoupled weight decay, on every weight (as PyTorch's AdamW); default: Keras's 0.004 for "
        "adamw, none for adam and sgd",
    )  # fmt: skip
    learning_rate: float = _knob(1e-3, min=0)
    scale_lr: bool = False  # linear scaling by replicas (use with schedule.warmup_epochs)
    loss: Literal["auto", "bce", "mse"] = _knob("auto", help="auto: bce for a sigmoid head, mse for a linear one")
    scheduled_sampling: int = _knob(
        0, min=0, help="steps over which training goes from teacher forcing to feeding the model its own predictions "
        "after evaluate.context_frames (OpenSTL trains ConvLSTM over 50000); 0 = teacher forcing only",
    )  # fmt: skip
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    backup: bool = True  # BackupAndRestore: resume after preemption
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    terminate_on_nan: bool = True
    csv_log: bool = True
    tensorboard: bool = _knob(False, help="TensorBoard logs under <output_dir>/tensorboard, uploaded to the run "
                              "(needs the tensorboard extra: pip install 'nfp[tensorboard]')")  # fmt: skip
    images: ImagesConfig = field(default_factory=ImagesConfig)
    mixed_precision: Literal["auto", "bfloat16", "float16", "off"] = _knob(
        "off", help="auto: bfloat16 on GPUs of compute capability >= 8.0 (A100, L4, H100), float16 on older ones, "
        "off without a GPU; bfloat16/float16 force the policy (on a CPU: to test a GPU's choice); true = auto",
    )  # fmt: skip
    jit_compile: Literal["auto", "on", "off"] = _knob(
        "auto", help="XLA. auto: on where a GPU is visible and the model compiles (else off, with a warning); "
        "on: XLA or an error, also on a CPU (to test a GPU's choice); see nfp/distribute/devices.py",
    )  # fmt: skip
    steps_per_execution: int = _knob(1, min=1)
    output_dir: str = "outputs/run"
    output_dir_lease_s: float = _knob(
        120.0, min=4, help="gs:// output dirs: a job holds its dir with a lock object renewed every lease/4 s; a "
        "killed job's hold ends this many seconds after its last renewal (local dirs: an flock, freed at once)",
    )  # fmt: skip
    seed: int = _knob(0, min=0)
    verbose: int | None = _knob(
        None, min=0, max=2, help="Keras fit output: 0 silent, 1 progress bar, 2 a line per epoch; "
        "default: 1 on a terminal, 2 when stdout is a file or pipe (no progress-bar escapes in logs)",
    )  # fmt: skip


# --------------------------------------------------------------------------- distribute / tracking / evaluate
@dataclass(frozen=True)
class DistributeConfig:
    strategy: Literal["auto", "default", "mirrored", "multi_worker"] = "auto"
    devices: list[str] = _knob([], help="mirrored: device names; empty = all GPUs")


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True
    experiment: str = "nfp"
    run_name: str | None = None
    log_model: bool = True
    register_as: str | None = None
    alias: str | None = _knob(None, help="alias set on the model version training registers (needs register_as)")
    log_checkpoints: bool = True
    # MLflow's system metrics (CPU, memory, disk, network; GPUs through nvidia-ml-py, the `gpu` extra) as
    # system/* in the run, every MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL s (default 10); other workers' as
    # system/worker_<i>/*
    system_metrics: bool = True


@dataclass(frozen=True)
class EvaluateConfig:
    protocol: Literal["rollout", "one_step"] = "rollout"
    context_frames: int = _knob(10, min=1)
    predict_frames: int = _knob(10, min=1)
    split: Literal["train", "val", "test"] = "test"
    max_clips: int | None = _knob(None, min=1)
    batch_size: int = _knob(16, min=1)
    every_n_epochs: int = _knob(0, min=0, help="during training on val; 0 = never")


# --------------------------------------------------------------------------- sweep (nfp sweep)
SWEEP_DISTRIBUTIONS = ("log_uniform", "uniform", "int", "choice")


@dataclass(frozen=True)
class SweepConfig:
    study: str = _knob(
        "nfp-sweep", help="the study's name, its parent run's name: every `nfp sweep` with this name against the same "
        "tracking server and tracking.experiment works on one study",
    )  # fmt: skip
    trials: int = _knob(10, min=1, help="trials in all, over every worker (exact); a rerun continues to it")
    timeout: float | None = _knob(None, min=1, help="seconds after which a worker starts no new trial")
    metric: str = _knob(
        "val_mse", help="a trial's score: its best epoch of this epoch metric (val_mse, val_ssim, …: the periodic "
        "evaluation, evaluate.every_n_epochs; val_loss, loss: Keras's)",
    )  # fmt: skip
    direction: Literal["minimize", "maximize"] = "minimize"
    space: dict[str, Any] = _knob(
        {}, help="config key path → distribution: {log_uniform: [lo, hi]}, {uniform: [lo, hi]}, {int: [a, b]} or "
        "{choice: [v, …]}, e.g. train.learning_rate: {log_uniform: [1e-4, 3e-3]}",
    )  # fmt: skip
    sampler: Literal["tpe", "random", "grid"] = _knob("tpe", help="grid: every combination of int and choice keys")
    pruner: Literal["median", "hyperband", "none"] = _knob(
        "median", help="stops a trial whose metric at an epoch is worse than the other trials' (median) or than its "
        "bracket's (hyperband); a pruned trial's run ends KILLED",
    )  # fmt: skip
    prune_after_trials: int = _knob(5, min=0, help="median: trials finished before any trial is pruned")
    prune_after_epochs: int = _knob(1, min=0, help="median: epochs a trial trains before it may be pruned")
    seed: int = _knob(0, min=0, help="the sampler's seed")
    output_dir: str = _knob("outputs/sweep", help="trials train in <output_dir>/<study>/trial-NNN (local or gs://)")
    lease_s: float = _knob(
        300.0, min=4, help="a worker renews its trial's heartbeat every lease/4 s; a trial whose worker was killed is "
        "taken over (resumed from its last epoch) by a worker of the study this many seconds after its last renewal",
    )  # fmt: skip


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distribute: DistributeConfig = field(default_factory=DistributeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def to_dict(self) -> dict:
        """The config as plain data; of the model keys, those of its family (a file that loads back as it is)."""
        from nfp import models

        out = dataclasses.asdict(self)
        keys = ("preset", "family", *models.of_config(self.model).KEYS)
        out["model"] = {key: value for key, value in out["model"].items() if key in keys}
        return out

    def flat(self) -> dict[str, Any]:
        """`{"data.frames": 20, ...}`: the resolved config as MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, node: dict) -> None:
            for key, value in node.items():
                if isinstance(value, dict):
                    walk(f"{prefix}{key}.", value)
                else:
                    out[prefix + key] = value

        walk("", self.to_dict())
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
