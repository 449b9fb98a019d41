"""SimVP with the gSTA (SimVP v2) and TAU translators as Keras 3 layers, channels-last, in keras.ops and stock
keras.layers only (TensorFlow and JAX backends).

Follows OpenSTL (chengtan9907/OpenSTL) block for block, with the same parameter counts:
- openstl/models/simvp_model.py: SimVP_Model, sampling_generator, Encoder, Decoder, MetaBlock, MidMetaNet;
- openstl/modules/simvp_modules.py: BasicConv2d/ConvSC, AttentionModule, SpatialAttention, GASubBlock,
  TemporalAttentionModule, TemporalAttention, TAUSubBlock; openstl/modules/layers/van.py: MixMlp, DWConv;
- openstl/methods/simvp.py `forward` (k frames in → n out, feeding predictions back when n > k);
- openstl/methods/tau.py `diff_div_reg` (differential_divergence here).

Where it differs: frames are (batch, time, H, W, C); tensors that OpenSTL lays out channel-first keep its channel
order (PixelShuffle's c·4 + 2i + j, the translator's t·hid_S + c), so weights port by transposing kernels.
Initialisers are OpenSTL's with fans computed here (Keras's own fan rules differ for depthwise kernels); timm's
trunc_normal_(std=.02) truncates at ±2, i.e. 100σ, so a plain normal is the same distribution. Dropout inside MixMlp
(OpenSTL's `drop`, 0 in every config) is left out. Keras's count_params() also counts BatchNorm's moving mean and
variance (PyTorch buffers), 2·C per BatchNorm more than OpenSTL's count.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from nfp.models.simvp.cost import LAYER_SCALE_INIT, LKA_DILATION, lka_kernels, sampling_generator, se_hidden

# --- initialisers (OpenSTL's, fans as PyTorch computes them) ---


def _normal(std: float):
    return keras.initializers.RandomNormal(stddev=std)


def _fan_out_normal(k: int, out_channels: int, groups: int = 1):
    """GASubBlock/MixMlp._init_weights for Conv2d: N(0, √(2/fan_out)), fan_out = k²·out/groups (bias 0)."""
    return _normal(math.sqrt(2.0 / (k * k * out_channels // groups)))


def _torch_default(fan_in: int):
    """PyTorch's default Conv2d/Linear init (kaiming_uniform a=√5, and the bias): U(±1/√fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


# --- small layers ---


@keras.saving.register_keras_serializable(package="nfp")
class DropPath(keras.layers.Layer):
    """Stochastic depth (timm's DropPath): in training, zeroes a whole sample's branch with probability `rate` and
    scales the kept ones by 1/(1−rate); identity at inference or when rate is 0. (batch, ...) → (batch, ...)."""

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate, self.seed = float(rate), seed
        self.seed_generator = keras.random.SeedGenerator(seed) if self.rate > 0 else None

    def call(self, x, training=None):
        if not training or self.rate <= 0:
            return x
        noise_shape = (None,) + (1,) * (len(x.shape) - 1)
        return keras.random.dropout(x, self.rate, noise_shape=noise_shape, seed=self.seed_generator)

    def compute_output_shape(self, shape):
        return shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="nfp")
class LayerScale(keras.layers.Layer):
    """x · γ, a learned per-channel scale initialised to `init_value` (GASubBlock's layer_scale_1/2). (..., C)."""

    def __init__(self, init_value: float = LAYER_SCALE_INIT, **kwargs):
        super().__init__(**kwargs)
        self.init_value = float(init_value)

    def build(self, shape):
        self.gamma = self.add_weight(
            shape=(shape[-1],), initializer=keras.initializers.Constant(self.init_value), name="gamma"
        )

    def call(self, x):
        return x * ops.cast(self.gamma, x.dtype)

    def compute_output_shape(self, shape):
        return shape

    def get_config(self):
        return {**super().get_config(), "init_value": self.init_value}


@keras.saving.register_keras_serializable(package="nfp")
class SigmoidGate(keras.layers.Layer):
    """AttentionModule's gate: (..., 2C) split into value f and gate g (in that order) → sigmoid(g)·f, (..., C)."""

    def call(self, x):
        f, g = ops.split(x, 2, axis=-1)
        return ops.sigmoid(g) * f

    def compute_output_shape(self, shape):
        return (*shape[:-1], shape[-1] // 2)


@keras.saving.register_keras_serializable(package="nfp")
class PixelShuffle(keras.layers.Layer):
    """torch.nn.PixelShuffle channels-last: (B, h, w, C·r²) → (B, h·r, w·r, C), input channel c·r² + i·r + j
    going to pixel (i, j) of each r×r cell, as PyTorch orders them."""

    def __init__(self, scale: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, x):
        r, (h, w, rrc) = self.scale, x.shape[1:]
        x = ops.reshape(x, (-1, h, w, rrc // (r * r), r, r))
        x = ops.transpose(x, (0, 1, 4, 2, 5, 3))  # (B, h, i, w, j, C)
        return ops.reshape(x, (-1, h * r, w * r, rrc // (r * r)))

    def compute_output_shape(self, shape):
        r = self.scale
        return (shape[0], shape[1] * r, shape[2] * r, shape[3] // (r * r))

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package="nfp")
class FoldTime(keras.layers.Layer):
    """(B, T, H, W, C) → (B·T, H, W, C): the encoder and decoder work frame by frame."""

    def call(self, x):
        return ops.reshape(x, (-1, *x.shape[2:]))

    def compute_output_shape(self, shape):
        batch = None if shape[0] is None or shape[1] is None else shape[0] * shape[1]
        return (batch, *shape[2:])


@keras.saving.register_keras_serializable(package="nfp")
class UnfoldTime(keras.layers.Layer):
    """(B·T, H, W, C) → (B, T, H, W, C), T = `frames`."""

    def __init__(self, frames: int, **kwargs):
        super().__init__(**kwargs)
        self.frames = frames

    def call(self, x):
        return ops.reshape(x, (-1, self.frames, *x.shape[1:]))

    def compute_output_shape(self, shape):
        return (None if shape[0] is None else shape[0] // self.frames, self.frames, *shape[1:])

    def get_config(self):
        return {**super().get_config(), "frames": self.frames}


@keras.saving.register_keras_serializable(package="nfp")
class FramesToChannels(keras.layers.Layer):
    """(B·T, h, w, c) latents → (B, h, w, T·c), channel t·c + i (MidMetaNet's x.reshape(B, T*C, H, W))."""

    def __init__(self, frames: int, **kwargs):
        super().__init__(**kwargs)
        self.frames = frames

    def call(self, x):
        h, w, c = x.shape[1:]
        x = ops.transpose(ops.reshape(x, (-1, self.frames, h, w, c)), (0, 2, 3, 1, 4))
        return ops.reshape(x, (-1, h, w, self.frames * c))

    def compute_output_shape(self, shape):
        return (None if shape[0] is None else shape[0] // self.frames, *shape[1:3], shape[3] * self.frames)

    def get_config(self):
        return {**super().get_config(), "frames": self.frames}


@keras.saving.register_keras_serializable(package="nfp")
class ChannelsToFrames(keras.layers.Layer):
    """The inverse of FramesToChannels: (B, h, w, T·c) → (B·T, h, w, c)."""

    def __init__(self, frames: int, **kwargs):
        super().__init__(**kwargs)
        self.frames = frames

    def call(self, x):
        h, w, tc = x.shape[1:]
        x = ops.transpose(ops.reshape(x, (-1, h, w, self.frames, tc // self.frames)), (0, 3, 1, 2, 4))
        return ops.reshape(x, (-1, h, w, tc // self.frames))

    def compute_output_shape(self, shape):
        return (None if shape[0] is None else shape[0] * self.frames, *shape[1:3], shape[3] // self.frames)

    def get_config(self):
        return {**super().get_config(), "frames": self.frames}


@keras.saving.register_keras_serializable(package="nfp")
class TakeFrames(keras.layers.Layer):
    """(B, T, ...) → (B, count, ...): the first `count` frames."""

    def __init__(self, count: int, **kwargs):
        super().__init__(**kwargs)
        self.count = count

    def call(self, x):
        return x[:, : self.count]

    def compute_output_shape(self, shape):
        return (shape[0], self.count, *shape[2:])

    def get_config(self):
        return {**super().get_config(), "count": self.count}


# --- blocks, built functionally (stock layers where Keras has them) ---

L = keras.layers


@keras.saving.register_keras_serializable(package="nfp")
class BatchNorm(keras.layers.BatchNormalization):
    """BatchNorm2d as Keras writes it (PyTorch momentum 0.1 = Keras 0.9, eps 1e-5), its statistics synchronized
    across the replicas of a tf.distribute strategy. Keras supports `synchronized` on TensorFlow only, so it is set
    from the backend on every construction: a model saved on one backend loads on the other."""

    def __init__(self, momentum=0.9, epsilon=1e-5, **kwargs):
        kwargs["synchronized"] = keras.backend.backend() == "tensorflow"
        super().__init__(momentum=momentum, epsilon=epsilon, **kwargs)


def _conv_sc(x, filters: int, kernel: int, *, downsample=False, upsample=False, name: str):
    """ConvSC: k×k conv (stride 2 when down-sampling; to 4·filters then PixelShuffle(2) when up-sampling),
    GroupNorm(2), SiLU. (B, h, w, c) → (B, h', w', filters)."""
    init = dict(kernel_initializer=_normal(0.02), bias_initializer="zeros")  # BasicConv2d._init_weights
    if upsample:
        x = L.Conv2D(4 * filters, kernel, padding="same", name=f"{name}_conv", **init)(x)
        x = PixelShuffle(2, name=f"{name}_shuffle")(x)
    elif downsample:  # PyTorch pads (k−1)//2 on every side; Keras's "same" would pad only bottom and right
        x = L.ZeroPadding2D((kernel - 1) // 2, name=f"{name}_pad")(x)
        x = L.Conv2D(filters, kernel, strides=2, name=f"{name}_conv", **init)(x)
    else:
        x = L.Conv2D(filters, kernel, padding="same", name=f"{name}_conv", **init)(x)
    x = L.GroupNormalization(2, epsilon=1e-5, name=f"{name}_norm")(x)
    return L.Activation("silu", name=f"{name}_act")(x)


def _attention(x, dim: int, translator: str, name: str):
    """SpatialAttention (gsta) / TemporalAttention (tau), shortcut included: 1×1, GELU, the large-kernel module,
    1×1, + x. gsta's module gates: 1×1 to 2·dim, sigmoid(g)·f; tau's scales a 1×1 (dim) by a squeeze-excitation
    of its input u and by u itself. TAUSubBlock builds its attention after GASubBlock's init ran, so its convs
    and Linears keep PyTorch's default init; gsta's get the fan-out normal."""
    k0, k1 = lka_kernels()
    gsta = translator == "gsta"

    def conv_init(k, c_in, c_out, groups=1):
        if gsta:
            return dict(kernel_initializer=_fan_out_normal(k, c_out, groups), bias_initializer="zeros")
        fan_in = k * k * c_in // groups
        return dict(kernel_initializer=_torch_default(fan_in), bias_initializer=_torch_default(fan_in))

    def dw_init(k):
        init = conv_init(k, dim, dim, dim)
        return dict(depthwise_initializer=init["kernel_initializer"], bias_initializer=init["bias_initializer"])

    shortcut = x
    u = L.Conv2D(dim, 1, name=f"{name}_proj1", **conv_init(1, dim, dim))(x)
    u = L.Activation("gelu", name=f"{name}_gelu")(u)  # exact (erf) GELU, as nn.GELU()
    a = L.DepthwiseConv2D(k0, padding="same", name=f"{name}_conv0", **dw_init(k0))(u)
    a = L.DepthwiseConv2D(k1, dilation_rate=LKA_DILATION, padding="same", name=f"{name}_conv_spatial", **dw_init(k1))(a)
    if gsta:
        a = L.Conv2D(2 * dim, 1, name=f"{name}_conv1", **conv_init(1, dim, 2 * dim))(a)
        a = SigmoidGate(name=f"{name}_gate")(a)
    else:
        a = L.Conv2D(dim, 1, name=f"{name}_conv1", **conv_init(1, dim, dim))(a)
        hidden = se_hidden(dim)
        se = L.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(u)
        se = L.Dense(hidden, "relu", use_bias=False, kernel_initializer=_torch_default(dim), name=f"{name}_fc1")(se)
        se = L.Dense(dim, "sigmoid", use_bias=False, kernel_initializer=_torch_default(hidden), name=f"{name}_fc2")(se)
        a = L.Multiply(name=f"{name}_scale")([se, a, u])
    a = L.Conv2D(dim, 1, name=f"{name}_proj2", **conv_init(1, dim, dim))(a)
    return L.Add(name=f"{name}_shortcut")([a, shortcut])


def _mix_mlp(x, dim: int, hidden: int, name: str):
    """MixMlp: 1×1 to hidden, 3×3 depthwise, GELU, 1×1 back to dim (fan-out normal init)."""
    x = L.Conv2D(hidden, 1, kernel_initializer=_fan_out_normal(1, hidden), name=f"{name}_fc1")(x)
    x = L.DepthwiseConv2D(
        3, padding="same", depthwise_initializer=_fan_out_normal(3, hidden, hidden), name=f"{name}_dw"
    )(x)
    x = L.Activation("gelu", name=f"{name}_gelu")(x)
    return L.Conv2D(dim, 1, kernel_initializer=_fan_out_normal(1, dim), name=f"{name}_fc2")(x)


def _meta_block(x, c_in: int, c_out: int, *, translator: str, mlp_ratio: float, drop_path: float, name: str):
    """MetaBlock: GASubBlock / TAUSubBlock on c_in channels, then a 1×1 reduction to c_out where they differ.
    Sub-block: x + drop_path(γ1·attention(BN(x))); x + drop_path(γ2·MixMlp(BN(x)))."""
    for branch in ("attn", "mlp"):
        y = BatchNorm(name=f"{name}_norm_{branch}")(x)
        if branch == "attn":
            y = _attention(y, c_in, translator, f"{name}_attn")
        else:
            y = _mix_mlp(y, c_in, int(c_in * mlp_ratio), f"{name}_mlp")
        y = LayerScale(name=f"{name}_scale_{branch}")(y)
        if drop_path > 0:
            y = DropPath(drop_path, name=f"{name}_drop_{branch}")(y)
        x = L.Add(name=f"{name}_add_{branch}")([x, y])
    if c_in != c_out:  # MetaBlock has no _init_weights: PyTorch's default
        init = _torch_default(c_in)
        x = L.Conv2D(c_out, 1, kernel_initializer=init, bias_initializer=init, name=f"{name}_reduction")(x)
    return x


def _drop_path_rates(drop_path: float, blocks: int) -> list[float]:
    """MidMetaNet's rule: torch.linspace(1e-2, drop_path, N) for the first N−1 blocks, drop_path for the last
    (so drop_path 0 still drops at 0.01 → ~0 in the first blocks, as OpenSTL trains)."""
    rates = [1e-2 + (drop_path - 1e-2) * i / (blocks - 1) for i in range(blocks)]
    return [*rates[:-1], drop_path]


def _check(model_cfg, frame_shape, context_frames: int, predict_frames: int) -> None:
    h, w, _ = frame_shape
    factor = 2 ** (model_cfg.encoder_blocks // 2)
    problems = [
        (model_cfg.translator not in ("gsta", "tau"), f"translator {model_cfg.translator!r}: gsta or tau"),
        (model_cfg.encoder_blocks < 2 or model_cfg.encoder_blocks % 2, "encoder_blocks: an even number ≥ 2"),
        (model_cfg.translator_blocks < 2, "translator_blocks: ≥ 2 (MidMetaNet)"),
        (model_cfg.mlp_ratio <= 1, "mlp_ratio: > 1 (MidMetaNet)"),
        (not model_cfg.encoder_kernel % 2 or not model_cfg.decoder_kernel % 2, "encoder/decoder_kernel: odd"),
        (h % factor or w % factor, f"frames {h}×{w}: sides that divide by {factor}"),
        (context_frames < 1 or predict_frames < 1, "context_frames and predict_frames: ≥ 1"),
        (model_cfg.output_activation not in ("linear", "sigmoid"), "output_activation: linear or sigmoid"),
    ]
    bad = [msg for failed, msg in problems if failed]
    if bad:
        raise ValueError("SimVP model: expected " + "; ".join(bad))


def _core(model_cfg, frame_shape, k: int) -> keras.Model:
    """SimVP_Model: (B, k, H, W, C) → (B, k, H, W, C) float32."""
    h, w, c = frame_shape
    s, t = model_cfg.spatial_channels, model_cfg.temporal_channels
    clip = keras.Input((k, h, w, c), name="clip")
    x = FoldTime(name="fold")(clip)
    skip = None
    for i, down in enumerate(sampling_generator(model_cfg.encoder_blocks)):
        x = _conv_sc(x, s, model_cfg.encoder_kernel, downsample=down, name=f"enc{i}")
        skip = x if i == 0 else skip
    x = FramesToChannels(k, name="stack")(x)
    n_t, rates = model_cfg.translator_blocks, _drop_path_rates(model_cfg.drop_path, model_cfg.translator_blocks)
    for i, rate in enumerate(rates):
        c_in, c_out = (k * s if i == 0 else t), (k * s if i == n_t - 1 else t)
        x = _meta_block(
            x, c_in, c_out, translator=model_cfg.translator, mlp_ratio=model_cfg.mlp_ratio, drop_path=rate,
            name=f"mid{i}",
        )  # fmt: skip
    x = ChannelsToFrames(k, name="unstack")(x)
    ups = sampling_generator(model_cfg.encoder_blocks, reverse=True)
    for i, up in enumerate(ups):
        if i == len(ups) - 1:
            x = L.Add(name="skip")([x, skip])
        x = _conv_sc(x, s, model_cfg.decoder_kernel, upsample=up, name=f"dec{i}")
    init = _torch_default(s)  # Decoder.readout: a plain nn.Conv2d
    x = L.Conv2D(c, 1, kernel_initializer=init, bias_initializer=init, name="readout")(x)
    x = UnfoldTime(k, name="unfold")(x)
    y = L.Activation(model_cfg.output_activation, dtype="float32", name="output")(x)
    return keras.Model(clip, y, name="core")


def build_model(model_cfg, *, frame_shape, context_frames: int, predict_frames: int) -> keras.Model:
    """Uncompiled SimVP: (batch, k=context_frames, H, W, C) "frames" → (batch, n=predict_frames, H, W, C) float32.

    The k→k model ("core") outputs as many frames as it gets; n < k keeps its first n, n > k calls it again on its
    own last k predictions (OpenSTL's SimVP.forward: ⌊n/k⌋ full blocks, then the first n mod k of one more)."""
    frame_shape = tuple(int(d) for d in frame_shape)
    _check(model_cfg, frame_shape, context_frames, predict_frames)
    core = _core(model_cfg, frame_shape, context_frames)
    return chain_blocks(core, frame_shape, context_frames, predict_frames, name=f"simvp_{model_cfg.preset}")


def chain_blocks(core: keras.Model, frame_shape, k: int, n: int, *, name: str) -> keras.Model:
    """A direct model of n frames from its k→k core: n < k keeps the core's first n, n > k calls it again on its own
    last k predictions (⌊n/k⌋ full blocks, then the first n mod k of one more)."""
    frames = keras.Input((k, *frame_shape), name="frames")
    if n <= k:
        y = core(frames)
        y = y if n == k else TakeFrames(n, dtype="float32", name="take")(y)
    else:
        blocks, cur = [], frames
        for _ in range(n // k):
            cur = core(cur)
            blocks.append(cur)
        if n % k:
            blocks.append(TakeFrames(n % k, dtype="float32", name="take")(core(cur)))
        y = L.Concatenate(axis=1, dtype="float32", name="predictions")(blocks)
    return keras.Model(frames, y, name=name)


def differential_divergence(y_true, y_pred, tau: float = 0.1, eps: float = 1e-12):
    """TAU's differential divergence regularisation (openstl/methods/tau.py diff_div_reg), per clip.

    y_true, y_pred: (batch, T, H, W, C). The frame-to-frame differences of each, flattened to (batch, T−1, D), go
    through softmax(·/tau) over D; the term is p·log(p/(q+eps)+eps) with p from y_pred, q from y_true. Returns
    (batch,) float32: its mean over (T−1, D) per clip, so the batch mean is OpenSTL's loss_gap.mean(); zeros when
    T ≤ 2 (OpenSTL returns 0)."""
    y_true, y_pred = ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")
    batch, frames = ops.shape(y_pred)[0], y_pred.shape[1]
    if frames <= 2:
        return ops.zeros_like(ops.reshape(y_pred, (batch, -1))[:, 0])

    def softmax_gap(y):
        gap = ops.reshape(y[:, 1:] - y[:, :-1], (batch, frames - 1, -1))
        return ops.softmax(gap / tau, axis=-1)

    p, q = softmax_gap(y_pred), softmax_gap(y_true)
    return ops.mean(p * ops.log(p / (q + eps) + eps), axis=(1, 2))
