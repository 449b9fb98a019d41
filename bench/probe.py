"""GPU probe: ConvLSTM speed and quality per GPU-second, nfp's models next to OpenSTL's cell.

The GPU machines available for measuring have PyTorch and JAX but no TensorFlow (and TF with
its CUDA libraries cannot be brought there), so nfp's own TF path cannot run there. This probe runs nfp's model
definition (`nfp.model.build_model`, from the checkout in NFP_ROOT, default the current
directory) under Keras 3 on the JAX backend, and OpenSTL's ConvLSTM-S in PyTorch (the peer a
user would pick instead), eager as OpenSTL runs it and under `torch.compile`, on the same generated
Moving MNIST (nfp's OpenSTL-style generator, scikit-learn digits), for the same number of seconds,
then scores each 10 -> 10 with OpenSTL's MSE (per-frame sum over 64x64), MAE and SSIM
(skimage-default style, data_range 2). Label its figures "Keras 3 / JAX backend, <card>".
It needs nfp.model, nfp.config and nfp.data.moving_mnist to import without TensorFlow.
Versioned with the model code it measures (bench/PROBE.md); bench/gpu_probe.py renders recorded results.

Usage, from the project root: python3 bench/probe.py data|keras|torch OUTDIR [budget_s, default 60]
  python3 bench/probe.py data $OUT >/dev/null || exit 1      # clips to $TMPDIR, baselines to $OUT/probe.jsonl
  PROBE_VARIANTS="keras_io=model.preset=keras_io; mine=model.preset=... train.loss=mse" \\
    timeout 300 python3 bench/probe.py keras $OUT 60
  timeout 400 python3 bench/probe.py torch $OUT 75          # the peer, same clips, same seconds (per mode)
  PROBE_MILESTONES=75,140 python3 bench/probe.py keras $OUT  # one run per model, scored at 75 s and 140 s
Each result is a JSON line, printed and appended to OUTDIR/probe.jsonl.
  PROBE_MILESTONES="s1,s2,..."  seconds of training at which to score (increasing; default: budget_s alone):
      each model trains until the first, the clock stops, it is scored 10 -> 10 on the held-out clips and a
      result line is written ("train_s": the training seconds reached, steps, clips_per_s and epochs_seen so
      far), then training goes on to the next. Scoring time is not training time. With milestones set,
      budget_s is not used: the last milestone ends the run. Both parts, and each torch mode.
  PROBE_VARIANTS="name=key.path=v key.path=v; name2=..."  nfp configs to train (keras part);
      default: "keras_io=model.preset=keras_io"
  PROBE_REF_KERAS=1  also a hand-built Keras ConvLSTM-S (patch 4, 4x128, 5x5) for comparison
  PROBE_POLICY=mixed_bfloat16|float32 (default mixed_bfloat16)
  PROBE_TORCH_COMPILE=0|1|both (default both): the peer eager (0), under torch.compile with the default
      inductor backend (1), or eager then compiled (both), each from the same seed on the same clips for
      budget_s seconds of training (or to each milestone). Two warm-up steps come first, outside the budget (under compile they
      compile the forward and backward; their time is the line's compile_s), then the weights and the
      optimizer go back to the seed's. A failing torch.compile is one line on stderr and a JSON line with
      "error" in place of the scores (after the lines of the milestones it reached, if any). Each line's
      "mode" is "eager" or "compile".
  PROBE_SMALL=1  a CPU dry run of the logic (64 + 16 clips of 32x32, batch 4)
"""

from __future__ import annotations

import copy
import json
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
    """{name: (build(), loss, learning_rate)} for each variant."""
    import keras
    from keras import layers

    sys.path.insert(0, ROOT)
    from nfp.config import load_config
    from nfp.model import build_model

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

    models = {}
    variants = os.environ.get("PROBE_VARIANTS", "keras_io=model.preset=keras_io")
    for item in filter(None, (v.strip() for v in variants.split(";"))):
        name, _, overrides = item.partition("=")
        cfg = load_config(None, [*overrides.split(), f"data.image_size={SIZE}"])
        losses = {"bce": "binary_crossentropy", "mse": "mse"}
        models[name] = (
            lambda cfg=cfg: build_model(cfg.model, image_size=SIZE),
            losses[cfg.train.loss],
            cfg.train.learning_rate,
        )
    if os.environ.get("PROBE_REF_KERAS") == "1":
        models["ref_keras_convlstm_s_patch4_bce"] = (convlstm_s, "binary_crossentropy", 1e-3)
    return models


def keras_backend_info():
    """({framework versions, devices}, peak_bytes()) of Keras's backend: JAX on the GPU machine; TF for CPU checks."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        peak = lambda: (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use", 0)
        return {"jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}, peak
    if backend == "tensorflow":
        import tensorflow as tf

        gpu = bool(tf.config.list_logical_devices("GPU"))
        peak = lambda: tf.config.experimental.get_memory_info("GPU:0")["peak"] if gpu else 0
        return {"tensorflow": tf.__version__, "devices": [d.name for d in tf.config.list_logical_devices()]}, peak
    return {"devices": []}, lambda: 0


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


def run_keras(budget):
    marks = milestones(budget)
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    train, test = load()
    info, peak_bytes = keras_backend_info()
    log({"part": "keras", "backend": keras.backend.backend(), "keras": keras.__version__, **info})
    x_all = train.astype(np.float32) / 255
    test_f = test.astype(np.float32) / 255
    for name, (make, loss_name, lr) in keras_models().items():
        for policy in (os.environ.get("PROBE_POLICY", "mixed_bfloat16"),) if not SMALL else ("float32",):
            keras.mixed_precision.set_global_policy(policy)
            keras.utils.set_random_seed(0)
            model = make()
            model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss_name)
            t0 = time.time()
            for _ in range(2):  # the first call builds the optimizer's slots and traces again
                model.train_on_batch(x_all[:BATCH, :-1], x_all[:BATCH, 1:])
            compile_s = time.time() - t0
            # timed training up to each milestone, batch by batch over shuffled clips; the clock stops while scoring
            rng = np.random.default_rng(0)
            order, pos, steps, train_s = rng.permutation(len(x_all)), 0, 0, 0.0
            for mark in marks:
                t0 = time.time()
                while train_s + time.time() - t0 < mark:
                    if pos + BATCH > len(order):
                        order, pos = rng.permutation(len(x_all)), 0
                    idx = np.sort(order[pos : pos + BATCH])
                    pos += BATCH
                    loss = model.train_on_batch(x_all[idx, :-1], x_all[idx, 1:])
                    steps += 1
                loss_v = float(np.asarray(loss))  # sync
                train_s += time.time() - t0
                t1 = time.time()
                pred = keras_rollout(model, test_f)
                log({"part": "keras", "model": name, "policy": policy, "loss": loss_name, "params": int(model.count_params()),
                     "compile_s": round(compile_s, 1), "train_s": round(train_s, 1), "steps": steps, "batch": BATCH,
                     "clips_per_s": round(steps * BATCH / train_s, 1), "epochs_seen": round(steps * BATCH / len(x_all), 2),
                     "final_loss": loss_v, "eval_s": round(time.time() - t1, 1),
                     "peak_gb": round(peak_bytes() / 2**30, 2), **scores(test_f[:, 10:], pred)})  # fmt: skip
            del model
            keras.backend.clear_session()


# ---------------------------------------------------------------- PyTorch, OpenSTL ConvLSTM-S cell
def run_torch(budget):
    marks = milestones(budget)
    mode_env = os.environ.get("PROBE_TORCH_COMPILE", "both")
    if mode_env not in TORCH_MODES:
        sys.exit(f"probe torch: PROBE_TORCH_COMPILE: got {mode_env!r}, expected 0, 1 or both")
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
    patch, hidden, nl = 4, 128, 4
    g, ch = SIZE // patch, patch * patch
    name = "openstl_convlstm_s_patch4"

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

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    train_gpu = torch.as_tensor(train, device=dev)
    log({"part": "torch", "torch": torch.__version__, "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
         "modes": list(TORCH_MODES[mode_env])})  # fmt: skip

    def train_and_score(mode):
        """Yields one result line per milestone."""
        torch.manual_seed(0)
        model = ConvLSTM().to(dev)
        initial = copy.deepcopy(model.state_dict())
        forward = torch.compile(model) if mode == "compile" else model  # shares model's parameters
        params = sum(p.numel() for p in model.parameters())

        def step(opt, clips):
            x = to_patches(clips)
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
                y = forward(x[:, :-1])
                loss = torch.nn.functional.mse_loss(y.float(), x[:, 1:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()

        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        # warm-up, outside the budget: compiles forward and backward under compile (cudnn autotuning in both)
        t0 = time.time()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(2):
            float(step(opt, train_gpu[:BATCH]))
        sync()
        compile_s = time.time() - t0
        model.load_state_dict(initial)  # in place: back to the seed's weights, and a fresh optimizer
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        gen = torch.Generator(device="cpu").manual_seed(0)  # the same clips in the same order for each mode
        steps, train_s = 0, 0.0
        for mark in marks:  # train to each milestone; the clock stops while scoring
            t0 = time.time()
            while train_s + time.time() - t0 < mark:
                idx = torch.randint(0, len(train), (BATCH,), generator=gen).to(dev)
                loss = step(opt, train_gpu[idx])
                steps += 1
            loss_v = float(loss)  # sync
            train_s += time.time() - t0
            t1 = time.time()
            model.eval()  # the rollout runs the eager module (the same weights): eval time is not compared
            preds = []
            with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
                for b in range(0, len(test), 64):
                    x = to_patches(test[b : b + 64])
                    y = model(x, context=10, total=20)[:, 9:]  # outputs for frames 10..19
                    preds.append(from_patches(y.float()).clamp(0, 1).cpu().numpy())
            model.train()
            pred = np.concatenate(preds)
            yield {"part": "torch", "model": name, "mode": mode, "policy": "autocast bf16" if dev == "cuda" else "float32",
                   "params": int(params), "compile_s": round(compile_s, 1), "train_s": round(train_s, 1), "steps": steps,
                   "batch": BATCH, "clips_per_s": round(steps * BATCH / train_s, 1),
                   "epochs_seen": round(steps * BATCH / len(train), 2), "final_loss": loss_v,
                   "eval_s": round(time.time() - t1, 1),
                   "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev == "cuda" else 0,
                   **scores(test[:, 10:].astype(np.float32) / 255, pred)}  # fmt: skip

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
