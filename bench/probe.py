"""GPU probe: speed and quality per GPU-second, nfp's models next to OpenSTL's (ConvLSTM-S, TAU, SimVP gSTA, PredRNN-V2)
and PredFormer's.

The GPU machines available for measuring have PyTorch and JAX but no TensorFlow (and TF with
its CUDA libraries cannot be brought there), so nfp's own TF path cannot run there. This probe runs nfp's model
definition (`nfp.models.build_model`, from the checkout in NFP_ROOT, default the current
directory) under Keras 3 on the JAX backend, and a PyTorch peer after the original (the model a user would pick
instead: OpenSTL's ConvLSTM-S, TAU / SimVP gSTA or PredRNN-V2, PredFormer's Quadruplet-TSST), eager as its authors
run it and under `torch.compile`, on the same generated
Moving MNIST (nfp's OpenSTL-style generator, scikit-learn digits), for the same number of seconds,
then scores each 10 -> 10 with OpenSTL's MSE (per-frame sum over 64x64), MAE and SSIM
(skimage-default style, data_range 2). Label its figures "Keras 3 / JAX backend, <card>".
It needs nfp.models, nfp.config, nfp.models.optim, nfp.distribute.devices and nfp.data.moving_mnist to import without TensorFlow.
Versioned with the model code it measures (bench/PROBE.md); bench/gpu_probe.py renders recorded results.

Usage, from the project root: python3 bench/probe.py data|keras|torch OUTDIR [budget_s, default 60]
  python3 bench/probe.py data $OUT >/dev/null || exit 1      # clips to $TMPDIR, baselines to $OUT/probe.jsonl
  PROBE_VARIANTS="keras_io=model.preset=keras_io; mine=model.preset=... train.loss=mse" \\
    timeout 300 python3 bench/probe.py keras $OUT 60
  timeout 400 python3 bench/probe.py torch $OUT 75          # the peer, same clips, same seconds (per mode)
  PROBE_MILESTONES=75,140 python3 bench/probe.py keras $OUT  # one run per model, scored at 75 s and 140 s
  PROBE_VARIANTS="tau=model.preset=tau; simvp=model.preset=simvp_gsta" python3 bench/probe.py keras $OUT 60
  PROBE_TORCH_MODEL=tau python3 bench/probe.py torch $OUT 60  # OpenSTL's TAU in PyTorch
  PROBE_VARIANTS="predrnn_v2=model.preset=predrnn_v2; predformer=model.preset=predformer" python3 bench/probe.py keras $OUT 60
  PROBE_TORCH_MODEL=predrnn python3 bench/probe.py torch $OUT 60  # OpenSTL's PredRNN-V2 (=predformer: PredFormer's)
Each result is a JSON line, printed and appended to OUTDIR/probe.jsonl.
  PROBE_MILESTONES="s1,s2,..."  seconds of training at which to score (increasing; default: budget_s alone):
      each model trains until the first, the clock stops, it is scored 10 -> 10 on the held-out clips and a
      result line is written ("train_s": the training seconds reached, steps, clips_per_s and epochs_seen so
      far), then training goes on to the next. Scoring time is not training time. With milestones set,
      budget_s is not used: the last milestone ends the run. Both parts, and each torch mode.
  PROBE_VARIANTS="name=key.path=v key.path=v; name2=..."  nfp configs to train (keras part);
      default: "keras_io=model.preset=keras_io". An autoregressive model (the convlstm family) trains on
      (frames 0..18 -> 1..19) with train.loss and is scored by a rollout fed its own predictions. A direct model
      (the simvp family: simvp_gsta, tau, simvp_tiny, tau_tiny) trains on (the first data.context_frames frames ->
      the next data.predict_frames; predformer likewise), k + n <= 20 and k <= 10, with nfp's loss
      (nfp.models.optim.build_loss: train.loss plus the family's terms, for TAU 0.1 x differential divergence)
      and is scored by nfp.models.rollout from frames 0..9. The learning rate: with train.schedule.name onecycle
      (the simvp presets' recipe), PyTorch's OneCycleLR up to train.learning_rate over the run's seconds (see
      one_cycle); any other schedule, a constant train.learning_rate. The preset's optimizer (Adam; AdamW with
      its weight decay for predformer), batch 16. PredRNN-V2 (predrnn_v2) trains as an autoregressive model, with
      its decoupling loss and reverse scheduled sampling (its layer's own).
  PROBE_REF_KERAS=1  also a hand-built Keras ConvLSTM-S (patch 4, 4x128, 5x5) for comparison
  PROBE_POLICY=mixed_bfloat16|float32 (default mixed_bfloat16)
  PROBE_TORCH_MODEL=convlstm|tau|gsta|predrnn|predformer (default convlstm): the torch part's peer. convlstm: OpenSTL's ConvLSTM-S
      cell (patch 4, 4 x 128, 5x5), teacher-forced on frames 0..18, MSE, Adam 1e-3 constant. tau / gsta:
      OpenSTL's SimVP_Model with the TAU / gSTA translator at its Moving MNIST sizes (hid_S 64, hid_T 512, N_S 4,
      N_T 8, mlp_ratio 8, drop_path 0), written out here (no OpenSTL or timm needed), frames 0..9 -> 10..19, MSE
      (+ 0.1 x diff_div_reg for tau, openstl/methods/tau.py), Adam with OneCycleLR up to 1e-3 over the run's
      seconds, as the keras part. predrnn: OpenSTL's PredRNNv2_Model (4 x 128 ST-LSTM v2, 5x5, patch 4, 1x1 conv_last,
      the shared adapter; 23,855,104 parameters), autoregressive on frames 0..18 -> 1..19 with OpenSTL's reverse
      scheduled sampling (0.5 / 0.5 before its step 25,000, which no probe run reaches), MSE + 0.1 x its decoupling loss,
      Adam with OneCycleLR up to 5e-4, scored by a rollout fed its own predictions from frame 10 (OpenSTL's test
      mask). predformer: PredFormer's Quadruplet-TSST (patch 8, width 256, 6 blocks of time, space, space, time
      gated transformers, 8 heads, SwiGLU, sinusoid positions, drop path 0; 25,297,728 parameters), attention by
      PyTorch's fused scaled_dot_product_attention, frames 0..9 -> 10..19, MSE, AdamW (weight decay 1e-2) with
      OneCycleLR up to 1e-3. Each line's "lr" is the peer's top, "optimizer" its optimizer. OneCycleLR's momentum
      cycling is left out on both sides (nfp's OneCycle has none).
  PROBE_TORCH_COMPILE=0|1|both (default both): the peer eager (0), under torch.compile with the default
      inductor backend (1), or eager then compiled (both), each from the same seed on the same clips for
      budget_s seconds of training (or to each milestone). Two warm-up steps come first, outside the budget (under compile they
      compile the forward and backward; their time is the line's compile_s), then the weights and the
      optimizer go back to the seed's. A failing torch.compile is one line on stderr and a JSON line with
      "error" in place of the scores (after the lines of the milestones it reached, if any). Each line's
      "mode" is "eager" or "compile".
  PROBE_SMALL=1  a CPU dry run of the logic (64 + 16 clips of 32x32, batch 4; the torch tau / gsta peer at
      nfp's tau_tiny / simvp_tiny sizes: hid_S 16, hid_T 64, N_S 2, N_T 2, mlp_ratio 4; predrnn at predrnn_v2_tiny's:
      2 x 32, 3x3, patch 4, reverse sampling over steps 500..1500; predformer at predformer_tiny's: patch 4, width
      64, 4 heads, 2 blocks)
Every result line also has the model's training FLOPs per clip (nfp.models.flops_per_clip, the analytic count
from the layer shapes, ~3x forward; for a peer, the count of the nfp preset of the same architecture), the TFLOP/s
they make at the line's clips/s, and "mfu", that over the card's dense bfloat16 peak (nfp.distribute.devices) where known.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

OUT = sys.argv[2] if len(sys.argv) > 2 else ""
ROOT = os.environ.get("NFP_ROOT", os.getcwd())
SMALL = os.environ.get("PROBE_SMALL") == "1"  # CPU dry run of the logic
DATA = os.path.join(tempfile.gettempdir(), "nfp-probe-clips-small.npz" if SMALL else "nfp-probe-clips.npz")
N_TRAIN, N_TEST, SIZE = (64, 16, 32) if SMALL else (8000, 512, 64)
BATCH = 4 if SMALL else 16
USAGE = "usage: python3 bench/probe.py data|keras|torch OUTDIR [budget_s]"
TORCH_MODES = {"0": ("eager",), "1": ("compile",), "both": ("eager", "compile")}
# the torch part's peers: {PROBE_TORCH_MODEL: (line's model name, the nfp preset of the same architecture)}
TORCH_MODELS = {
    "convlstm": ("openstl_convlstm_s_patch4", "convlstm_s"),
    "tau": ("openstl_tau", "tau_tiny" if SMALL else "tau"),
    "gsta": ("openstl_simvp_gsta", "simvp_tiny" if SMALL else "simvp_gsta"),
    "predrnn": ("openstl_predrnn_v2", "predrnn_v2_tiny" if SMALL else "predrnn_v2"),
    "predformer": ("predformer_quadruplet_tsst", "predformer_tiny" if SMALL else "predformer"),
}
# OpenSTL's configs/mmnist/TAU.py and simvp/SimVP_gSTA.py sizes; PROBE_SMALL: nfp's *_tiny sizes
SIMVP_SIZES = (
    dict(hid_s=16, hid_t=64, n_s=2, n_t=2, mlp_ratio=4.0, drop_path=0.0, kernel=3)
    if SMALL
    else dict(hid_s=64, hid_t=512, n_s=4, n_t=8, mlp_ratio=8.0, drop_path=0.0, kernel=3)
)
TAU_ALPHA = 0.1  # configs/mmnist/TAU.py alpha: the weight of diff_div_reg
# OpenSTL's configs/mmnist/PredRNNv2.py (reverse sampling: r_sampling_step_1, _2, r_exp_alpha); PROBE_SMALL: nfp's
# predrnn_v2_tiny
PREDRNN_SIZES = (
    dict(hidden=32, layers=2, kernel=3, patch=4, decouple_beta=0.1, reverse_sampling=(500, 1500), alpha=250.0)
    if SMALL
    else dict(hidden=128, layers=4, kernel=5, patch=4, decouple_beta=0.1, reverse_sampling=(25000, 50000), alpha=5000.0)
)
# PredFormer's configs/mmnist/PredFormer.py (dim 256, heads 8 of 32, Ndepth 6, scale_dim 4); PROBE_SMALL: nfp's
# predformer_tiny
PREDFORMER_SIZES = (
    dict(patch=4, width=64, heads=4, blocks=2, mlp_ratio=4.0, drop_path=0.0)
    if SMALL
    else dict(patch=8, width=256, heads=8, blocks=6, mlp_ratio=4.0, drop_path=0.0)
)


def milestones(budget: float) -> list[float]:
    """PROBE_MILESTONES as increasing seconds of training (default: [budget]); exits with one line if malformed."""
    text = os.environ.get("PROBE_MILESTONES", "").strip()
    if not text:
        return [budget]
    try:
        marks = [float(m) for m in text.split(",") if m.strip()]
    except ValueError:
        marks = []
    if not marks or marks[0] <= 0 or marks != sorted(set(marks)):
        sys.exit(f"probe: PROBE_MILESTONES: got {text!r}, expected increasing positive seconds such as 75,140")
    return marks


def one_cycle(fraction: float, top: float, pct_start=0.3, div_factor=25.0, final_div_factor=1e4) -> float:
    """The learning rate at `fraction` (0..1) of the run's training seconds: PyTorch's OneCycleLR (anneal "cos",
    two phases, its defaults as OpenSTL uses them; nfp.models.optim.OneCycle) with fraction standing for step / last step:
    a cosine from top/25 up to `top` at 30% of the run, then down to top/25/1e4 at its end, held after it. Over
    seconds, not steps, so that the schedule spans the run whatever the step rate: every model and peer gets the
    same LR at the same second."""
    initial = top / div_factor
    final = initial / final_div_factor
    f = min(max(fraction, 0.0), 1.0)
    start, end, u, v = (0.0, pct_start, initial, top) if f <= pct_start else (pct_start, 1.0, top, final)
    return v + (u - v) * (1 + math.cos(math.pi * (f - start) / (end - start))) / 2


def learning_rate(schedule: str, top: float, seconds: float, total: float) -> float:
    """`schedule` "onecycle": one_cycle at seconds / total; "constant": top."""
    return one_cycle(seconds / total, top) if schedule == "onecycle" else top


def nfp_train_flops(overrides: list[str], input_frames: int, output_frames: int) -> int | None:
    """nfp's analytic training FLOPs per clip (nfp.models.flops_per_clip) for the config of `overrides` at the
    probe's frame size; None where it cannot be counted here (no Keras: the counts live beside the layers)."""
    sys.path.insert(0, ROOT)
    from nfp.config import load_config

    try:
        from nfp.models import flops_per_clip

        cfg = load_config(None, [*overrides, f"data.image_size={SIZE}"])
        count = flops_per_clip(
            cfg.model, frame_shape=(SIZE, SIZE, 1), input_frames=input_frames, output_frames=output_frames
        )
    except ImportError as err:
        print(f"probe: no FLOP count ({first_line(err)})", file=sys.stderr, flush=True)
        return None
    return int(count["train"])


def flop_fields(train_flops: int | None, clips_per_s: float, card: str) -> dict:
    """A result line's FLOP fields: training GFLOP per clip, the TFLOP/s they make at clips_per_s, and mfu, that
    over `card`'s dense bfloat16 peak (nfp.distribute.devices.PEAK_BF16_TFLOPS; null for a CPU or an unknown card)."""
    if train_flops is None:
        return {"train_gflop_per_clip": None, "tflops": None, "mfu": None}
    sys.path.insert(0, ROOT)
    from nfp.distribute.devices import PEAK_BF16_TFLOPS

    tflops = train_flops * clips_per_s / 1e12
    peak = next((p for key, p in PEAK_BF16_TFLOPS.items() if key in card), None)
    return {
        "train_gflop_per_clip": round(train_flops / 1e9, 2),
        "tflops": round(tflops, 3),
        "mfu": round(tflops / peak, 4) if peak else None,
    }


def log(obj):
    print(json.dumps(obj), flush=True)
    with open(os.path.join(OUT, "probe.jsonl"), "a") as f:
        f.write(json.dumps(obj) + "\n")


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def make_data():
    sys.path.insert(0, ROOT)
    from nfp.data.moving_mnist import generate, load_digit_bank

    t = time.time()
    bank = load_digit_bank("sklearn", 28 if SIZE == 64 else 14)
    train = generate(N_TRAIN, seed=0, split="train", bank=bank, frames=20, image_size=SIZE)
    test = generate(N_TEST, seed=0, split="test", bank=bank, frames=20, image_size=SIZE)
    np.savez(DATA, train=train, test=test)
    log({"part": "data", "train": list(train.shape), "test": list(test.shape), "seconds": round(time.time() - t, 1)})


def load():
    if not os.path.exists(DATA):
        sys.exit(
            f"probe: no clips at {DATA}; run `python3 bench/probe.py data OUTDIR` first (same PROBE_SMALL, TMPDIR)"
        )
    d = np.load(DATA)
    return d["train"], d["test"]


def ssim_openstl(a, b):
    """skimage-default SSIM (7x7 uniform, sample cov, data_range 2) per frame; a, b (..., H, W) in [0,1]."""
    from scipy.ndimage import uniform_filter

    a = a.astype(np.float64).reshape(-1, *a.shape[-2:])
    b = np.clip(b, 0, 1).astype(np.float64).reshape(-1, *b.shape[-2:])
    f = lambda z: uniform_filter(z, size=(1, 7, 7))[:, 3:-3, 3:-3]
    ux, uy = f(a), f(b)
    k = 49 / 48
    vx, vy, vxy = k * (f(a * a) - ux * ux), k * (f(b * b) - uy * uy), k * (f(a * b) - ux * uy)
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s.mean())


def scores(truth, pred):
    """truth, pred (n, 10, H, W) float in [0,1] -> OpenSTL numbers."""
    err = pred - truth
    return {
        "mse": float(np.mean(np.sum(err**2, axis=(2, 3)))),
        "mae": float(np.mean(np.sum(np.abs(err), axis=(2, 3)))),
        "ssim": ssim_openstl(truth, pred),
    }


def baselines(test):
    x = test.astype(np.float32) / 255
    copy_last = np.repeat(x[:, 9:10], 10, axis=1)
    mean_frame = np.repeat(x[:, :10].mean(1, keepdims=True), 10, axis=1)
    return {"copy_last": scores(x[:, 10:], copy_last), "mean_frame": scores(x[:, 10:], mean_frame)}


# ---------------------------------------------------------------- Keras 3 on JAX
def keras_models():
    """{name: variant} for each variant, a variant being a dict: make() (the uncompiled model), loss (what
    compile takes) and loss_name, lr and schedule ("onecycle" or "constant"), pairs(clips) → (inputs, targets),
    direct (whether nfp.models.rollout scores it), train_flops (per clip, or None)."""
    import keras
    from keras import layers

    sys.path.insert(0, ROOT)
    from nfp.config import load_config
    from nfp.models import build_model, is_direct, loss_terms
    from nfp.models.optim import build_loss

    def convlstm_s(patch=4, hidden=128, layers_n=4):
        """OpenSTL ConvLSTM-S shape: space-to-depth patch 4, 4 x ConvLSTM(128, 5x5), 1x1 conv back, no norm."""
        g = SIZE // patch
        inp = keras.Input((None, SIZE, SIZE, 1))
        x = layers.Reshape((-1, g, patch, g, patch, 1))(inp)
        x = layers.Permute((1, 2, 4, 3, 5, 6))(x)
        x = layers.Reshape((-1, g, g, patch * patch))(x)
        for _ in range(layers_n):
            x = layers.ConvLSTM2D(hidden, 5, padding="same", return_sequences=True)(x)
        x = layers.TimeDistributed(layers.Conv2D(patch * patch, 1))(x)
        x = layers.Reshape((-1, g, g, patch, patch, 1))(x)
        x = layers.Permute((1, 2, 4, 3, 5, 6))(x)
        x = layers.Reshape((-1, SIZE, SIZE, 1))(x)
        out = layers.Activation("sigmoid", dtype="float32")(x)
        return keras.Model(inp, out, name="convlstm_s_patch4")

    shifted = lambda clips: (clips[:, :-1], clips[:, 1:])  # autoregressive: frames 0..18 → 1..19
    models = {}
    variants = os.environ.get("PROBE_VARIANTS", "keras_io=model.preset=keras_io")
    for item in filter(None, (v.strip() for v in variants.split(";"))):
        name, _, overrides = item.partition("=")
        name, overrides = name.strip(), overrides.split()
        cfg = load_config(None, [*overrides, f"data.image_size={SIZE}"])
        schedule = "onecycle" if cfg.train.schedule.name == "onecycle" else "constant"
        variant = dict(lr=cfg.train.learning_rate, schedule=schedule, direct=is_direct(cfg.model),
                       optimizer=cfg.train.optimizer, weight_decay=cfg.train.weight_decay)  # fmt: skip
        if variant["direct"]:
            k, n = cfg.data.context_frames, cfg.data.predict_frames
            if k > 10 or k + n > 20:
                sys.exit(
                    f"probe: variant {name}: data.context_frames {k}, data.predict_frames {n}: expected k <= 10 and "
                    "k + n <= 20 (clips of 20 frames, scored from frames 0..9)"
                )
            terms = loss_terms(cfg.model)
            variant.update(
                make=lambda cfg=cfg, k=k, n=n: build_model(
                    cfg.model, frame_shape=(SIZE, SIZE, 1), context_frames=k, predict_frames=n
                ),
                loss=build_loss(cfg.train, terms),
                loss_name=" + ".join([cfg.train.loss, *(f"{w:g} {term}" for term, w in terms.items())]),
                pairs=lambda clips, k=k, n=n: (clips[:, :k], clips[:, k : k + n]),
                train_flops=nfp_train_flops(overrides, k, n),
            )
        else:
            loss = {"bce": "binary_crossentropy", "mse": "mse"}[cfg.train.loss]
            own = f" + {cfg.model.decouple_beta:g} decoupling" if cfg.model.family == "predrnn" else ""  # its layer's
            variant.update(
                make=lambda cfg=cfg: build_model(cfg.model, frame_shape=(SIZE, SIZE, 1), sampling_from=10),
                loss=loss, loss_name=loss + own, pairs=shifted, train_flops=nfp_train_flops(overrides, 19, 19),
            )  # fmt: skip
        models[name] = variant
    if os.environ.get("PROBE_REF_KERAS") == "1":
        models["ref_keras_convlstm_s_patch4_bce"] = dict(
            make=convlstm_s, loss="binary_crossentropy", loss_name="binary_crossentropy", lr=1e-3,
            schedule="constant", direct=False, pairs=shifted, train_flops=None, optimizer="adam", weight_decay=None,
        )  # fmt: skip
    return models


def keras_backend_info():
    """({framework versions, devices}, peak_bytes(), the first device's name) of Keras's backend: JAX on the GPU
    machine; TF for CPU checks."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        peak = lambda: (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use", 0)
        card = jax.devices()[0].device_kind if jax.devices()[0].platform == "gpu" else "cpu"
        return {"jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}, peak, card
    if backend == "tensorflow":
        import tensorflow as tf

        gpu = bool(tf.config.list_logical_devices("GPU"))
        peak = lambda: tf.config.experimental.get_memory_info("GPU:0")["peak"] if gpu else 0
        card = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0]).get(
            "device_name", "GPU"
        ) if gpu else "cpu"  # fmt: skip
        return {"tensorflow": tf.__version__, "devices": [d.name for d in tf.config.list_logical_devices()]}, peak, card
    return {"devices": []}, lambda: 0, "cpu"


def keras_rollout(model, test_f):
    """10 -> 10 predictions (n, 10, H, W) for test_f (n, 20, H, W), rolled out at a fixed 19-frame shape
    (the model is causal: later inputs do not reach earlier outputs)."""
    pred = np.zeros((len(test_f), 10, SIZE, SIZE), np.float32)
    for b in range(0, len(test_f), 64):
        frames = np.zeros((min(64, len(test_f) - b), 19, SIZE, SIZE, 1), np.float32)
        frames[:, :10] = test_f[b : b + 64, :10, ..., None]
        for t in range(10, 20):
            out = np.asarray(model.predict_on_batch(frames), np.float32)
            if t < 19:
                frames[:, t] = out[:, t - 1]
            pred[b : b + len(frames), t - 10] = out[:, t - 1, ..., 0]
    return pred


def direct_rollout(model, test_f):
    """10 -> 10 predictions (n, 10, H, W) of a direct model by nfp.models.rollout (blocks of its n frames from the
    last k), 64 clips at a time."""
    from nfp.models import rollout

    return np.concatenate(
        [rollout(model, test_f[b : b + 64, :10, ..., None], 10)[..., 0] for b in range(0, len(test_f), 64)]
    )


def run_keras(budget):
    marks = milestones(budget)
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    train, test = load()
    info, peak_bytes, card = keras_backend_info()
    log({"part": "keras", "backend": keras.backend.backend(), "keras": keras.__version__, **info})
    x_all = train.astype(np.float32) / 255
    test_f = test.astype(np.float32) / 255
    for name, v in keras_models().items():
        for policy in (os.environ.get("PROBE_POLICY", "mixed_bfloat16"),) if not SMALL else ("float32",):
            keras.mixed_precision.set_global_policy(policy)
            keras.utils.set_random_seed(0)
            model = v["make"]()
            lr = lambda seconds, v=v: learning_rate(v["schedule"], v["lr"], seconds, marks[-1])
            optimizer = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "sgd": keras.optimizers.SGD}
            decay = {} if v["weight_decay"] is None else {"weight_decay": v["weight_decay"]}  # the preset's recipe
            model.compile(optimizer=optimizer[v["optimizer"]](lr(0.0), **decay), loss=v["loss"])
            t0 = time.time()
            for _ in range(2):  # the first call builds the optimizer's slots and traces again
                model.train_on_batch(*v["pairs"](x_all[:BATCH]))
            compile_s = time.time() - t0
            # timed training up to each milestone, batch by batch over shuffled clips; the clock stops while scoring
            rng = np.random.default_rng(0)
            order, pos, steps, train_s = rng.permutation(len(x_all)), 0, 0, 0.0
            for mark in marks:
                t0 = time.time()
                while (seconds := train_s + time.time() - t0) < mark:
                    if pos + BATCH > len(order):
                        order, pos = rng.permutation(len(x_all)), 0
                    idx = np.sort(order[pos : pos + BATCH])
                    pos += BATCH
                    if v["schedule"] != "constant":
                        model.optimizer.learning_rate = lr(seconds)
                    loss = model.train_on_batch(*v["pairs"](x_all[idx]), return_dict=True)["loss"]  # and metrics
                    steps += 1
                loss_v = float(np.asarray(loss))  # sync
                train_s += time.time() - t0
                t1 = time.time()
                pred = direct_rollout(model, test_f) if v["direct"] else keras_rollout(model, test_f)
                rate = steps * BATCH / train_s
                log({"part": "keras", "model": name, "policy": policy, "loss": v["loss_name"], "optimizer": v["optimizer"],
                     "kind": "direct" if v["direct"] else "autoregressive", "schedule": v["schedule"], "lr": v["lr"],
                     "params": int(model.count_params()), "compile_s": round(compile_s, 1), "train_s": round(train_s, 1),
                     "steps": steps, "batch": BATCH, "clips_per_s": round(rate, 1),
                     "epochs_seen": round(steps * BATCH / len(x_all), 2), "final_loss": loss_v,
                     "eval_s": round(time.time() - t1, 1), "peak_gb": round(peak_bytes() / 2**30, 2),
                     **flop_fields(v["train_flops"], rate, card), **scores(test_f[:, 10:], pred)})  # fmt: skip
            del model
            keras.backend.clear_session()


# ---------------------------------------------------------------- PyTorch peers, after OpenSTL
def convlstm_peer(torch, nn, dev):
    """OpenSTL's ConvLSTM-S cell (openstl/modules/convlstm_modules.py, layer_norm=0; openstl/models/convlstm_model.py):
    patch 4, 4 x 128 hidden, 5x5, teacher-forced on frames 0..18, MSE, Adam 1e-3 constant. The peer's functions."""
    patch, hidden, nl = 4, 128, 4
    g, ch = SIZE // patch, patch * patch

    class Cell(nn.Module):  # openstl/modules/convlstm_modules.py, layer_norm=0
        def __init__(self, cin):
            super().__init__()
            self.conv_x = nn.Conv2d(cin, hidden * 4, 5, padding=2, bias=False)
            self.conv_h = nn.Conv2d(hidden, hidden * 4, 5, padding=2, bias=False)

        def forward(self, x, h, c):
            i, f, gg, o = torch.split(self.conv_x(x) + self.conv_h(h), hidden, dim=1)
            i, f, o = torch.sigmoid(i), torch.sigmoid(f + 1.0), torch.sigmoid(o)  # OpenSTL's forget bias
            c = f * c + i * torch.tanh(gg)
            return o * torch.tanh(c), c

    class ConvLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.cells = nn.ModuleList([Cell(ch if i == 0 else hidden) for i in range(nl)])
            self.conv_last = nn.Conv2d(hidden, ch, 1, bias=False)

        def forward(self, frames, context=None, total=None):
            """frames (B, T, ch, g, g). Teacher forcing when context is None; else roll out after `context`."""
            b = frames.shape[0]
            h = [frames.new_zeros(b, hidden, g, g) for _ in range(nl)]
            c = [frames.new_zeros(b, hidden, g, g) for _ in range(nl)]
            outs, steps = [], (frames.shape[1] if context is None else total - 1)
            x_gen = None
            for t in range(steps):
                x = frames[:, t] if (context is None or t < context) else x_gen
                for i, cell in enumerate(self.cells):
                    h[i], c[i] = cell(x if i == 0 else h[i - 1], h[i], c[i])
                x_gen = self.conv_last(h[-1])
                outs.append(x_gen)
            return torch.stack(outs, 1)

    def to_patches(u8):  # (n, T, H, W) uint8 -> (n, T, ch, g, g) float
        x = torch.as_tensor(u8, device=dev).float().div_(255)
        n, t = x.shape[:2]
        return x.reshape(n, t, g, patch, g, patch).permute(0, 1, 3, 5, 2, 4).reshape(n, t, ch, g, g)

    def from_patches(p):  # (n, T, ch, g, g) -> (n, T, H, W)
        n, t = p.shape[:2]
        return p.reshape(n, t, patch, patch, g, g).permute(0, 1, 4, 2, 5, 3).reshape(n, t, SIZE, SIZE)

    def pairs(clips):
        x = to_patches(clips)
        return x[:, :-1], x[:, 1:]

    def predict(model, clips):  # outputs for frames 10..19
        return from_patches(model(to_patches(clips), context=10, total=20)[:, 9:].float())

    return dict(
        make=ConvLSTM, pairs=pairs, loss=lambda out, y: torch.nn.functional.mse_loss(out.float(), y), predict=predict,
        schedule="constant", lr=1e-3, optimizer="adam", weight_decay=0.0, loss_name="mse", frames=(19, 19),
    )  # fmt: skip


def direct_io(torch, dev):
    """A direct peer's training pairs (frames 0..9 -> 10..19) and its 10 -> 10 prediction, from uint8 clips (n, T, H, W)
    as (n, T, 1, H, W) floats in [0, 1]."""

    def frames(clips):
        return torch.as_tensor(clips, device=dev).float().div_(255)[:, :, None]

    def pairs(clips):
        x = frames(clips)
        return x[:, :10], x[:, 10:20]

    def predict(model, clips):
        return model(frames(clips)[:, :10])[:, :, 0].float()

    return pairs, predict


def simvp_peer(torch, nn, dev, translator: str):
    """OpenSTL's SimVP_Model (openstl/models/simvp_model.py) with the TAU (model_type 'tau', TAUSubBlock) or gSTA
    ('gsta', GASubBlock) translator, at SIMVP_SIZES, written out from openstl/modules/simvp_modules.py and
    openstl/modules/layers/van.py (MixMlp) with their initialisation (timm's trunc_normal_ is torch's; DropPath
    inlined). Frames 0..9 -> 10..19 in one pass; loss MSE, for tau + 0.1 x diff_div_reg (openstl/methods/tau.py);
    Adam with OneCycleLR up to 1e-3 (configs/mmnist/TAU.py, SimVP_gSTA.py). The peer's functions."""
    F = torch.nn.functional
    tau = translator == "tau"
    hs, ht, n_s, n_t, kernel = (SIMVP_SIZES[k] for k in ("hid_s", "hid_t", "n_s", "n_t", "kernel"))

    class DropPath(nn.Module):  # timm.layers.DropPath, scale_by_keep
        def __init__(self, p):
            super().__init__()
            self.p = p

        def forward(self, x):
            if self.p == 0.0 or not self.training:
                return x
            keep = 1 - self.p
            mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
            return x * mask.div_(keep)

    class ConvSC(nn.Module):  # ConvSC / BasicConv2d, act_norm=True
        def __init__(self, c_in, c_out, k, down=False, up=False):
            super().__init__()
            stride = 2 if down else 1
            pad = (k - stride + 1) // 2
            if up:
                self.conv = nn.Sequential(nn.Conv2d(c_in, c_out * 4, k, 1, pad), nn.PixelShuffle(2))
            else:
                self.conv = nn.Conv2d(c_in, c_out, k, stride, pad)
            self.norm, self.act = nn.GroupNorm(2, c_out), nn.SiLU()
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.constant_(m.bias, 0)

        def forward(self, x):
            return self.act(self.norm(self.conv(x)))

    class Attention(nn.Module):  # SpatialAttention + AttentionModule (gsta) / TemporalAttention + ...Module (tau)
        def __init__(self, d, temporal, kernel_size=21, dilation=3):
            super().__init__()
            d_k = 2 * dilation - 1
            dd_k = kernel_size // dilation + ((kernel_size // dilation) % 2 - 1)
            self.proj_1, self.activation = nn.Conv2d(d, d, 1), nn.GELU()
            self.conv0 = nn.Conv2d(d, d, d_k, padding=(d_k - 1) // 2, groups=d)
            self.conv_spatial = nn.Conv2d(d, d, dd_k, padding=dilation * (dd_k - 1) // 2, groups=d, dilation=dilation)
            self.conv1 = nn.Conv2d(d, d if temporal else 2 * d, 1)
            self.temporal = temporal
            if temporal:
                r = max(d // 16, 4)
                self.fc = nn.Sequential(
                    nn.Linear(d, d // r, bias=False), nn.ReLU(True), nn.Linear(d // r, d, bias=False), nn.Sigmoid()
                )
            self.proj_2 = nn.Conv2d(d, d, 1)

        def forward(self, x):
            shortcut = x
            u = self.activation(self.proj_1(x))
            a = self.conv1(self.conv_spatial(self.conv0(u)))
            if self.temporal:  # squeeze-excitation of u, times the 1x1, times u
                a = self.fc(u.mean((2, 3)))[:, :, None, None] * a * u
            else:
                f, gate = torch.split(a, a.shape[1] // 2, dim=1)
                a = torch.sigmoid(gate) * f
            return self.proj_2(a) + shortcut

    class MixMlp(nn.Module):  # openstl/modules/layers/van.py, drop 0
        def __init__(self, d, hidden):
            super().__init__()
            self.fc1 = nn.Conv2d(d, hidden, 1)
            self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
            self.act, self.fc2 = nn.GELU(), nn.Conv2d(hidden, d, 1)

        def forward(self, x):
            return self.fc2(self.act(self.dwconv(self.fc1(x))))

    class SubBlock(nn.Module):  # GASubBlock; TAUSubBlock: the same, its attention replaced after the init
        def __init__(self, d, drop_path):
            super().__init__()
            self.norm1, self.attn = nn.BatchNorm2d(d), Attention(d, temporal=False)
            self.drop_path = DropPath(drop_path)
            self.norm2, self.mlp = nn.BatchNorm2d(d), MixMlp(d, int(d * SIMVP_SIZES["mlp_ratio"]))
            self.layer_scale_1 = nn.Parameter(1e-2 * torch.ones(d))
            self.layer_scale_2 = nn.Parameter(1e-2 * torch.ones(d))
            for m in self.modules():  # GASubBlock._init_weights (MixMlp's own is the same)
                if isinstance(m, nn.Conv2d):
                    fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                    m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
                    m.bias.data.zero_()
            if tau:
                self.attn = Attention(d, temporal=True)  # PyTorch's default init

        def forward(self, x):
            x = x + self.drop_path(self.layer_scale_1[:, None, None] * self.attn(self.norm1(x)))
            return x + self.drop_path(self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x)))

    class MetaBlock(nn.Module):
        def __init__(self, c_in, c_out, drop_path):
            super().__init__()
            self.block = SubBlock(c_in, drop_path)
            self.reduction = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

        def forward(self, x):
            return self.reduction(self.block(x))

    def samplings(n, reverse=False):  # sampling_generator
        s = ([False, True] * (n // 2))[:n]
        return list(reversed(s)) if reverse else s

    class SimVP(nn.Module):  # SimVP_Model: Encoder, MidMetaNet, Decoder
        def __init__(self, frames=10, channels=1):
            super().__init__()
            c_in = frames * hs
            self.enc = nn.ModuleList(
                [ConvSC(channels if i == 0 else hs, hs, kernel, down=s) for i, s in enumerate(samplings(n_s))]
            )
            dpr = [x.item() for x in torch.linspace(1e-2, SIMVP_SIZES["drop_path"], n_t)]  # as MidMetaNet
            self.hid = nn.Sequential(
                MetaBlock(c_in, ht, dpr[0]),
                *[MetaBlock(ht, ht, dpr[i]) for i in range(1, n_t - 1)],
                MetaBlock(ht, c_in, SIMVP_SIZES["drop_path"]),
            )
            self.dec = nn.ModuleList([ConvSC(hs, hs, kernel, up=s) for s in samplings(n_s, reverse=True)])
            self.readout = nn.Conv2d(hs, channels, 1)

        def forward(self, x_raw):  # (B, T, C, H, W) -> (B, T, C, H, W)
            b, t, c, h, w = x_raw.shape
            x = self.enc[0](x_raw.reshape(b * t, c, h, w))
            skip = x
            for layer in self.enc[1:]:
                x = layer(x)
            _, c_, h_, w_ = x.shape
            x = self.hid(x.reshape(b, t * c_, h_, w_)).reshape(b * t, c_, h_, w_)
            for layer in self.dec[:-1]:
                x = layer(x)
            y = self.readout(self.dec[-1](x + skip))
            return y.reshape(b, t, c, h, w)

    def diff_div_reg(pred_y, batch_y, tau=0.1, eps=1e-12):  # openstl/methods/tau.py
        b, t = pred_y.shape[:2]
        if t <= 2:
            return 0
        gap_p = F.softmax((pred_y[:, 1:] - pred_y[:, :-1]).reshape(b, t - 1, -1) / tau, -1)
        gap_b = F.softmax((batch_y[:, 1:] - batch_y[:, :-1]).reshape(b, t - 1, -1) / tau, -1)
        return (gap_p * torch.log(gap_p / (gap_b + eps) + eps)).mean()

    def loss(pred, truth):
        pred = pred.float()
        mse = F.mse_loss(pred, truth)
        return mse + TAU_ALPHA * diff_div_reg(pred, truth) if tau else mse

    pairs, predict = direct_io(torch, dev)

    return dict(
        make=SimVP, pairs=pairs, loss=loss, predict=predict, schedule="onecycle", lr=1e-3, optimizer="adam",
        weight_decay=0.0, loss_name=f"mse + {TAU_ALPHA:g} diff_div_reg" if tau else "mse", frames=(10, 10),
    )  # fmt: skip


def predrnn_peer(torch, nn, dev, sizes=None):
    """OpenSTL's PredRNNv2_Model (openstl/models/predrnnv2_model.py, openstl/modules/predrnnv2_modules.py
    SpatioTemporalLSTMCellv2, layer_norm 0) at `sizes` (default PREDRNN_SIZES: configs/mmnist/PredRNNv2.py, 4 x 128,
    5x5, patch 4, stride 1; 23,855,104 parameters at 64x64x1), written out here with PyTorch's default
    initialisation, as OpenSTL's. Autoregressive as the ConvLSTM peer: inputs frames 0..18, output t predicts frame
    t+1; the loss is OpenSTL's, MSE + decouple_beta (0.1) x the decoupling loss (the mean |cosine| between the
    adapter's L2-normalised increments of c and m, over clips, channels, layers and steps). Training inputs come as
    OpenSTL's reverse scheduled sampling draws them (openstl/utils/predrnn_utils.py reserve_schedule_sampling_exp:
    per clip and step, step 0 the true frame, context steps 1..9 the true frame with probability r_eta, later steps
    with eta, else the previous prediction; before r_sampling_step_1 (25,000 steps, never reached in a probe's run)
    both 0.5), the draw's step counted from make(). Adam with OneCycleLR up to 5e-4 (configs/mmnist/PredRNNv2.py).
    Scored 10 -> 10 by feeding its own predictions from step 10 on (OpenSTL's test mask). The peer's functions;
    `mask(step, batch)` is the sampling mask of a training step."""
    F = torch.nn.functional
    z = PREDRNN_SIZES if sizes is None else sizes
    patch, hidden, nl, k, beta = z["patch"], z["hidden"], z["layers"], z["kernel"], z["decouple_beta"]
    g, ch = SIZE // patch, patch * patch
    state = {"step": 0}  # training draws since make(): the sampling schedule's step

    class Cell(nn.Module):  # SpatioTemporalLSTMCellv2, layer_norm 0: convolutions without bias
        def __init__(self, cin):
            super().__init__()
            conv = lambda c_in, c_out, size=k: nn.Conv2d(c_in, c_out, size, 1, size // 2, bias=False)
            self.conv_x, self.conv_h = conv(cin, 7 * hidden), conv(hidden, 4 * hidden)
            self.conv_m, self.conv_o = conv(hidden, 3 * hidden), conv(2 * hidden, hidden)
            self.conv_last = conv(2 * hidden, hidden, 1)

        def forward(self, x, h, c, m):
            i_x, f_x, g_x, i_xp, f_xp, g_xp, o_x = torch.split(self.conv_x(x), hidden, dim=1)
            i_h, f_h, g_h, o_h = torch.split(self.conv_h(h), hidden, dim=1)
            i_m, f_m, g_m = torch.split(self.conv_m(m), hidden, dim=1)
            delta_c = torch.sigmoid(i_x + i_h) * torch.tanh(g_x + g_h)
            c = torch.sigmoid(f_x + f_h + 1.0) * c + delta_c  # _forget_bias 1.0
            delta_m = torch.sigmoid(i_xp + i_m) * torch.tanh(g_xp + g_m)
            m = torch.sigmoid(f_xp + f_m + 1.0) * m + delta_m
            mem = torch.cat((c, m), 1)
            h = torch.sigmoid(o_x + o_h + self.conv_o(mem)) * torch.tanh(self.conv_last(mem))
            return h, c, m, delta_c, delta_m

    class PredRNNv2(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell_list = nn.ModuleList([Cell(ch if i == 0 else hidden) for i in range(nl)])
            self.conv_last = nn.Conv2d(hidden, ch, 1, bias=False)
            self.adapter = nn.Conv2d(hidden, hidden, 1, bias=False)  # shared by every layer

        def forward(self, frames, truth):
            """frames (B, T, ch, g, g), truth (B, T) float: 1 where step t's input is frame t, 0 where it is the
            previous step's prediction (step 0 always the frame) -> ((B, T, ch, g, g) predictions, decoupling)."""
            b = frames.shape[0]
            h = [frames.new_zeros(b, hidden, g, g) for _ in range(nl)]
            c = [frames.new_zeros(b, hidden, g, g) for _ in range(nl)]
            memory = frames.new_zeros(b, hidden, g, g)
            unit = lambda d: F.normalize(self.adapter(d).view(b, hidden, -1), dim=2)
            outs, cosines, x_gen = [], [], None
            for t in range(frames.shape[1]):
                net = frames[:, t]
                if t > 0:
                    w = truth[:, t, None, None, None]
                    net = w * net + (1 - w) * x_gen
                for i, cell in enumerate(self.cell_list):
                    h[i], c[i], memory, delta_c, delta_m = cell(net if i == 0 else h[i - 1], h[i], c[i], memory)
                    cosines.append(torch.abs(F.cosine_similarity(unit(delta_c), unit(delta_m), dim=2)).mean())
                x_gen = self.conv_last(h[-1])
                outs.append(x_gen)
            return torch.stack(outs, 1), torch.stack(cosines).mean()

    def make():
        state["step"] = 0
        return PredRNNv2()

    def probabilities(step):  # reserve_schedule_sampling_exp's r_eta (context steps) and eta (predicted steps)
        start, end = z["reverse_sampling"]
        if step < start:
            return 0.5, 0.5
        if step < end:
            return 1.0 - 0.5 * math.exp(-(step - start) / z["alpha"]), 0.5 - 0.5 / (end - start) * (step - start)
        return 1.0, 0.0

    def mask(step, batch, steps=19):
        r_eta, eta = probabilities(step)
        t = torch.arange(steps, device=dev)[None, :]
        threshold = torch.where(t < 10, r_eta, eta)
        return ((t == 0) | (torch.rand(batch, steps, device=dev) < threshold)).float()

    def to_patches(u8):  # (n, T, H, W) uint8 -> (n, T, ch, g, g) float: reshape_patch's order
        x = torch.as_tensor(u8, device=dev).float().div_(255)
        n, t = x.shape[:2]
        return x.reshape(n, t, g, patch, g, patch).permute(0, 1, 3, 5, 2, 4).reshape(n, t, ch, g, g)

    def from_patches(p):  # (n, T, ch, g, g) -> (n, T, H, W)
        n, t = p.shape[:2]
        return p.reshape(n, t, patch, patch, g, g).permute(0, 1, 4, 2, 5, 3).reshape(n, t, SIZE, SIZE)

    def pairs(clips):
        x = to_patches(clips)
        truth = mask(state["step"], len(x))
        state["step"] += 1
        return (x[:, :-1], truth), x[:, 1:]

    def loss(out, y):
        pred, decoupling = out
        return F.mse_loss(pred.float(), y) + beta * decoupling.float()

    def predict(model, clips):  # outputs for frames 10..19, fed its own predictions from step 10 on
        x = to_patches(clips)[:, :19]
        truth = (torch.arange(19, device=dev) < 10).float().expand(len(x), 19)
        return from_patches(model(x, truth)[0][:, 9:].float())

    return dict(
        make=make, pairs=pairs, loss=loss, predict=predict, mask=mask, schedule="onecycle", lr=5e-4, optimizer="adam",
        weight_decay=0.0, loss_name=f"mse + {beta:g} decoupling", frames=(19, 19),
    )  # fmt: skip


def predformer_peer(torch, nn, dev, sizes=None):
    """PredFormer's PredFormer_Model, Quadruplet-TSST (yyyujintang/PredFormer openstl/models/
    PredFormer_Quadruplet_TSST.py, openstl/modules/PredFormer_modules.py) at `sizes` (default PREDFORMER_SIZES:
    configs/mmnist/PredFormer.py, patch 8, dim 256, 8 heads of 32, 6 blocks, SwiGLU of 4 x 256, dropout and drop
    path 0; 25,297,728 parameters at 64x64x1), written out here with its initialisation (the gated transformers'
    Linears trunc_normal std .02, biases 0; the embedding's and head's PyTorch's default; timm's DropPath inlined, an
    identity at 0). Where it differs: attention by F.scaled_dot_product_attention (PyTorch's fused kernel; the same
    softmax(q k^T / sqrt(d)) v as PredFormer's einsum, the peer at its best), no einops. Frames 0..9 -> 10..19 in one
    pass, MSE (openstl/methods/PredFormer.py), AdamW with weight decay 1e-2 on every parameter (its
    filter_bias_and_bn default False) and OneCycleLR up to 1e-3 (scripts/mmnist/mm_PredFormer_TSST_train.sh). The
    peer's functions."""
    F = torch.nn.functional
    z = PREDFORMER_SIZES if sizes is None else sizes
    p, dim, heads, blocks = z["patch"], z["width"], z["heads"], z["blocks"]
    mlp, drop = int(dim * z["mlp_ratio"]), z["drop_path"]
    n_h = SIZE // p

    def drop_path(x, training):  # timm.layers.DropPath, scale_by_keep
        if drop == 0.0 or not training:
            return x
        keep = 1 - drop
        return x * x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)

    class GatedTransformer(nn.Module):  # depth 1: PreNorm(Attention), PreNorm(SwiGLU), residuals, a final LayerNorm
        def __init__(self):
            super().__init__()
            self.norm_attn, self.to_qkv = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim, bias=False)
            self.to_out = nn.Linear(dim, dim)
            self.norm_ff, self.fc1_g, self.fc1_x = nn.LayerNorm(dim), nn.Linear(dim, mlp), nn.Linear(dim, mlp)
            self.fc2, self.norm = nn.Linear(mlp, dim), nn.LayerNorm(dim)
            for m in self.modules():  # GatedTransformer._init_weights
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.constant_(m.bias, 0)

        def forward(self, x):  # (groups, length, dim)
            n, length = x.shape[:2]
            q, k, v = self.to_qkv(self.norm_attn(x)).view(n, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, dim)
            x = x + drop_path(self.to_out(a), self.training)
            y = self.norm_ff(x)
            x = x + drop_path(self.fc2(F.silu(self.fc1_g(y)) * self.fc1_x(y)), self.training)
            return self.norm(x)

    class PredFormerLayer(nn.Module):  # time, space, space, time; no residual around it
        def __init__(self):
            super().__init__()
            self.ts_temporal_transformer, self.ts_space_transformer = GatedTransformer(), GatedTransformer()
            self.st_space_transformer, self.st_temporal_transformer = GatedTransformer(), GatedTransformer()

        def forward(self, x):  # (B, T, N, D)
            b, t, n, d = x.shape
            over_time = lambda f, x: f(x.transpose(1, 2).reshape(b * n, t, d)).view(b, n, t, d).transpose(1, 2)
            over_space = lambda f, x: f(x.reshape(b * t, n, d)).view(b, t, n, d)
            x = over_space(self.ts_space_transformer, over_time(self.ts_temporal_transformer, x))
            return over_time(self.st_temporal_transformer, over_space(self.st_space_transformer, x))

    class PredFormer(nn.Module):
        def __init__(self, frames=10, channels=1):
            super().__init__()
            self.to_patch_embedding = nn.Linear(p * p * channels, dim)
            positions = frames * n_h * n_h  # sinusoidal_embedding: a constant, not a parameter
            i = torch.arange(dim, dtype=torch.float64)  # in double, as PredFormer's Python floats
            angle = torch.arange(positions, dtype=torch.float64)[:, None] / 10000 ** (2 * (i // 2) / dim)[None, :]
            pe = torch.where(torch.arange(dim) % 2 == 0, torch.sin(angle), torch.cos(angle)).float()
            self.register_buffer("pos_embedding", pe.view(1, frames, n_h * n_h, dim), persistent=False)
            self.blocks = nn.ModuleList([PredFormerLayer() for _ in range(blocks)])
            self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, channels * p * p))

        def forward(self, x):  # (B, T, C, H, W) -> (B, T, C, H, W)
            b, t, c, h, w = x.shape
            x = x.reshape(b, t, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 4, 6, 2)  # b t (h w) (p1 p2 c)
            x = self.to_patch_embedding(x.reshape(b, t, -1, p * p * c)) + self.pos_embedding
            for blk in self.blocks:
                x = blk(x)
            x = self.mlp_head(x).view(b, t, h // p, w // p, c, p, p)  # unpacked as (c, p1, p2), as PredFormer's
            return x.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, t, c, h, w)

    pairs, predict = direct_io(torch, dev)

    return dict(
        make=PredFormer, pairs=pairs, loss=lambda out, y: F.mse_loss(out.float(), y), predict=predict,
        schedule="onecycle", lr=1e-3, optimizer="adamw", weight_decay=1e-2, loss_name="mse", frames=(10, 10),
    )  # fmt: skip


def run_torch(budget):
    marks = milestones(budget)
    mode_env = os.environ.get("PROBE_TORCH_COMPILE", "both")
    if mode_env not in TORCH_MODES:
        sys.exit(f"probe torch: PROBE_TORCH_COMPILE: got {mode_env!r}, expected 0, 1 or both")
    which = os.environ.get("PROBE_TORCH_MODEL", "convlstm")
    if which not in TORCH_MODELS:
        sys.exit(f"probe torch: PROBE_TORCH_MODEL: got {which!r}, expected {', '.join(TORCH_MODELS)}")
    try:
        import torch
        from torch import nn
    except ImportError as err:
        sys.exit(f"probe torch: PyTorch is not installed here ({first_line(err)}); the torch part needs it")

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    train, test = load()
    name, preset = TORCH_MODELS[which]
    makers = {"convlstm": convlstm_peer, "predrnn": predrnn_peer, "predformer": predformer_peer}
    peer = simvp_peer(torch, nn, dev, which) if which in ("tau", "gsta") else makers[which](torch, nn, dev)
    # the FLOP count is nfp's (it lives beside the Keras layers): Keras on the backend loaded here, not on JAX,
    # which would take the GPU's memory
    os.environ["KERAS_BACKEND"] = "torch"
    train_flops = nfp_train_flops([f"model.preset={preset}"], *peer["frames"])
    card = torch.cuda.get_device_name() if dev == "cuda" else "cpu"

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    train_gpu = torch.as_tensor(train, device=dev)
    log(
        {
            "part": "torch",
            "torch": torch.__version__,
            "device": card,
            "peer": name,
            "modes": list(TORCH_MODES[mode_env]),
        }
    )

    def train_and_score(mode):
        """Yields one result line per milestone."""
        torch.manual_seed(0)
        model = peer["make"]().to(dev)
        initial = copy.deepcopy(model.state_dict())
        forward = torch.compile(model) if mode == "compile" else model  # shares model's parameters
        params = sum(p.numel() for p in model.parameters())
        lr = lambda seconds: learning_rate(peer["schedule"], peer["lr"], seconds, marks[-1])
        optimizer = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[peer["optimizer"]]
        new_optimizer = lambda: optimizer(model.parameters(), lr=lr(0.0), weight_decay=peer["weight_decay"])

        def step(opt, clips):
            x, y = peer["pairs"](clips)  # x: the model's input, or a tuple of its arguments
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
                out = forward(*x) if isinstance(x, tuple) else forward(x)
                loss = peer["loss"](out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()

        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        # warm-up, outside the budget: compiles forward and backward under compile (cudnn autotuning in both)
        t0 = time.time()
        opt = new_optimizer()
        for _ in range(2):
            float(step(opt, train_gpu[:BATCH]))
        sync()
        compile_s = time.time() - t0
        model.load_state_dict(initial)  # in place: back to the seed's weights, and a fresh optimizer
        opt = new_optimizer()
        gen = torch.Generator(device="cpu").manual_seed(0)  # the same clips in the same order for each mode
        steps, train_s = 0, 0.0
        for mark in marks:  # train to each milestone; the clock stops while scoring
            t0 = time.time()
            while (seconds := train_s + time.time() - t0) < mark:
                idx = torch.randint(0, len(train), (BATCH,), generator=gen).to(dev)
                if peer["schedule"] != "constant":
                    for group in opt.param_groups:
                        group["lr"] = lr(seconds)
                loss = step(opt, train_gpu[idx])
                steps += 1
            loss_v = float(loss)  # sync
            train_s += time.time() - t0
            t1 = time.time()
            model.eval()  # the rollout runs the eager module (the same weights): eval time is not compared
            preds = []
            with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
                for b in range(0, len(test), 64):
                    preds.append(peer["predict"](model, test[b : b + 64]).clamp(0, 1).cpu().numpy())
            model.train()
            pred = np.concatenate(preds)
            rate = steps * BATCH / train_s
            yield {"part": "torch", "model": name, "mode": mode, "policy": "autocast bf16" if dev == "cuda" else "float32",
                   "loss": peer["loss_name"], "schedule": peer["schedule"], "lr": peer["lr"],
                   "optimizer": peer["optimizer"], "params": int(params),
                   "compile_s": round(compile_s, 1), "train_s": round(train_s, 1), "steps": steps, "batch": BATCH,
                   "clips_per_s": round(rate, 1), "epochs_seen": round(steps * BATCH / len(train), 2),
                   "final_loss": loss_v, "eval_s": round(time.time() - t1, 1),
                   "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev == "cuda" else 0,
                   **flop_fields(train_flops, rate, card), **scores(test[:, 10:].astype(np.float32) / 255, pred)}  # fmt: skip

    for mode in TORCH_MODES[mode_env]:
        if mode == "eager":
            for record in train_and_score(mode):
                log(record)
            continue
        try:  # lines of the milestones reached before a failure stay written
            for record in train_and_score(mode):
                log(record)
        except Exception as err:  # noqa: BLE001 - a failing torch.compile is a result to record, not the probe's end
            print(f"probe torch: torch.compile failed, no compiled row: {first_line(err)}", file=sys.stderr, flush=True)
            log({"part": "torch", "model": name, "mode": mode, "error": first_line(err)})


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or sys.argv[1] not in ("data", "keras", "torch"):
        sys.exit(USAGE)
    os.makedirs(OUT, exist_ok=True)
    what = sys.argv[1]
    budget = float(sys.argv[3]) if len(sys.argv) > 3 else 60
    if what == "data":
        make_data()
        log({"part": "baselines", **baselines(load()[1])})
    elif what == "keras":
        run_keras(budget)
    elif what == "torch":
        run_torch(budget)
