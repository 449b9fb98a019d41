"""PredFormer's Quadruplet-TSST model as Keras 3 layers, channels-last, in keras.ops and stock keras.layers only
(TensorFlow and JAX backends).

Follows the PredFormer repository (yyyujintang/PredFormer, a fork of OpenSTL) layer for layer, with the same
parameter count (25,297,728 at 64×64×1, patch 8, width 256, 6 blocks):
- openstl/models/PredFormer_Quadruplet_TSST.py: patches of p×p×C flattened and embedded by one Linear, a fixed 1-D
  sinusoid over the k·(H/p)·(W/p) (frame, patch) positions added once, `blocks` PredFormerLayers of four gated
  transformers attending over time, space, space, time (no residual around a block), then LayerNorm and a Linear
  back to p×p×C patches; no output activation;
- openstl/modules/PredFormer_modules.py: GatedTransformer (pre-norm attention and SwiGLU, residual adds, a final
  LayerNorm of its own), Attention (qkv without bias, 8 heads of 32), SwiGLU (SiLU(fc1_g(x)) · fc1_x(x) → fc2).

Where it differs: frames are (batch, time, H, W, C), cut into patches by the ConvLSTM's SpaceToDepth, a patch flattened
as (p1, p2, c) on the way in and out
(PredFormer unpacks the head's output as (c, p1, p2): the same for grey frames). Attention is
keras.ops.dot_product_attention, the backend's fused kernel where it has one. Initialisers are PredFormer's: the
transformers' Linears trunc_normal(std .02) (truncated at ±2, i.e. 100σ: a plain normal), biases 0; the embedding's
and head's PyTorch's default U(±1/√fan_in). Dropout and drop path are 0 in its Moving MNIST config; drop_path here
is timm's, rising linearly over the blocks.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from nfp.models.convlstm.layers import DepthToSpace, SpaceToDepth
from nfp.models.predformer.cost import ATTENTIONS, LAYER_NORM_EPS, hidden
from nfp.models.simvp.layers import DropPath, chain_blocks

L = keras.layers


def _torch_default(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def _trunc_normal():
    """A new initialiser per weight: an unseeded Keras initialiser draws its seed once, when made, so one shared by
    several weights would give each of them the same values."""
    return keras.initializers.RandomNormal(stddev=0.02)


def sinusoid(positions: int, dim: int) -> np.ndarray:
    """PredFormer's sinusoidal_embedding: (positions, dim), sin at even channels, cos at odd, of p / 10000^(2⌊i/2⌋/dim)."""
    angle = np.arange(positions)[:, None] / 10000 ** (2 * (np.arange(dim) // 2) / dim)[None, :]
    return np.where(np.arange(dim) % 2 == 0, np.sin(angle), np.cos(angle)).astype(np.float32)


@keras.saving.register_keras_serializable(package="nfp")
class AddPositions(keras.layers.Layer):
    """(B, T, N, D) + the fixed sinusoid over the T·N (frame, patch) positions, frame-major: a constant, no weight."""

    def call(self, x):
        _, t, n, d = x.shape
        return x + ops.cast(ops.reshape(sinusoid(t * n, d), (1, t, n, d)), x.dtype)

    def compute_output_shape(self, shape):
        return shape


@keras.saving.register_keras_serializable(package="nfp")
class GatedTransformer(keras.layers.Layer):
    """One of PredFormer's gated transformers over (B, T, N, D) tokens, attending over time (each patch's T tokens)
    or space (each frame's N tokens): x + Attention(LN(x)), then + SwiGLU(LN(x)), then LayerNorm."""

    def __init__(self, attends: str, width: int, heads: int, hidden: int, drop_path: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if attends not in ("time", "space") or width % heads:
            raise ValueError(f"GatedTransformer: attends time or space, width a multiple of heads; got {attends}, "
                             f"{width}, {heads}")  # fmt: skip
        self.attends, self.width, self.heads, self.hidden, self.drop_path = attends, width, heads, hidden, drop_path
        # the sub-layers compute as this layer does: a model saved under mixed precision loads under float32 too
        policy = self.dtype_policy
        norm = dict(epsilon=LAYER_NORM_EPS, dtype=policy)

        def dense(units, name, **kwargs):
            return L.Dense(units, kernel_initializer=_trunc_normal(), bias_initializer="zeros", dtype=policy, name=name,
                           **kwargs)  # fmt: skip

        self.norm_attention = L.LayerNormalization(**norm, name="norm_attention")
        self.qkv = dense(3 * width, "qkv", use_bias=False)
        self.out = dense(width, "out")
        self.norm_mlp = L.LayerNormalization(**norm, name="norm_mlp")
        self.fc1_g = dense(hidden, "fc1_g")
        self.fc1_x = dense(hidden, "fc1_x")
        self.fc2 = dense(width, "fc2")
        self.norm = L.LayerNormalization(**norm, name="norm")
        self.drop_attention = DropPath(drop_path, dtype=policy, name="drop_attention")
        self.drop_mlp = DropPath(drop_path, dtype=policy, name="drop_mlp")

    def build(self, shape):
        tokens = (*shape[:-1], self.width)
        for layer in (self.norm_attention, self.norm_mlp, self.norm, self.qkv, self.fc1_g, self.fc1_x):
            layer.build(tokens)
        self.out.build((*shape[:-1], self.width))
        self.fc2.build((*shape[:-1], self.hidden))

    def _attention(self, x):
        """x (groups, length, D) → (groups, length, D): multi-head self-attention over the length axis."""
        length, head_dim = x.shape[1], self.width // self.heads
        q, k, v = ops.split(ops.reshape(self.qkv(x), (-1, length, 3, self.heads, head_dim)), 3, axis=2)
        q, k, v = (ops.squeeze(t, 2) for t in (q, k, v))  # (groups, length, heads, head_dim)
        y = ops.dot_product_attention(q, k, v, scale=head_dim**-0.5)
        return self.out(ops.reshape(y, (-1, length, self.width)))

    def call(self, x, training=None):
        _, t, n, d = x.shape
        if self.attends == "time":  # each patch's T tokens: (B·N, T, D)
            x = ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (-1, t, d))
        else:  # each frame's N tokens: (B·T, N, D)
            x = ops.reshape(x, (-1, n, d))
        x = x + self.drop_attention(self._attention(self.norm_attention(x)), training=training)
        y = self.norm_mlp(x)
        y = self.fc2(ops.silu(self.fc1_g(y)) * self.fc1_x(y))
        x = self.norm(x + self.drop_mlp(y, training=training))
        if self.attends == "time":
            return ops.transpose(ops.reshape(x, (-1, n, t, d)), (0, 2, 1, 3))
        return ops.reshape(x, (-1, t, n, d))

    def compute_output_shape(self, shape):
        return shape

    def get_config(self):
        return {
            **super().get_config(), "attends": self.attends, "width": self.width, "heads": self.heads,
            "hidden": self.hidden, "drop_path": self.drop_path,
        }  # fmt: skip


def _core(model_cfg, frame_shape, k: int) -> keras.Model:
    """PredFormer_Model: (B, k, H, W, C) → (B, k, H, W, C) float32, output frame t in input frame t's tokens."""
    p, d = model_cfg.patch_size, model_cfg.width
    patch = p * p * frame_shape[2]
    clip = keras.Input((k, *frame_shape), name="clip")
    h, w = frame_shape[0] // p, frame_shape[1] // p
    x = SpaceToDepth(p, name="to_patches")(clip)  # (B, k, h, w, p·p·C), OpenSTL's reshape_patch order
    x = L.Reshape((k, h * w, patch), name="tokens")(x)  # patch n = row · w + column
    x = L.Dense(d, kernel_initializer=_torch_default(patch), bias_initializer=_torch_default(patch), name="embed")(x)
    x = AddPositions(name="positions")(x)
    for block in range(model_cfg.blocks):
        for i, attends in enumerate(ATTENTIONS):  # one drop path rate for every layer, as PredFormer's
            x = GatedTransformer(
                attends, d, model_cfg.heads, hidden(model_cfg), model_cfg.drop_path, name=f"b{block}_{i}"
            )(x)
    x = L.LayerNormalization(epsilon=LAYER_NORM_EPS, name="head_norm")(x)
    x = L.Dense(patch, kernel_initializer=_torch_default(d), bias_initializer=_torch_default(d), name="head")(x)
    x = L.Reshape((k, h, w, patch), name="grid")(x)
    x = DepthToSpace(p, name="from_patches")(x)
    y = L.Activation(model_cfg.output_activation, dtype="float32", name="output")(x)
    return keras.Model(clip, y, name="core")


def check(model_cfg, frame_shape, context_frames: int, predict_frames: int) -> None:
    h, w, _ = frame_shape
    p = model_cfg.patch_size
    problems = [
        (model_cfg.width % model_cfg.heads, f"width {model_cfg.width}: a multiple of heads {model_cfg.heads}"),
        (h % p or w % p, f"frames {h}×{w}: sides that divide by patch_size {p}"),
        (hidden(model_cfg) < 1, "mlp_ratio × width: ≥ 1"),
        (context_frames < 1 or predict_frames < 1, "context_frames and predict_frames: ≥ 1"),
        (model_cfg.output_activation not in ("linear", "sigmoid"), "output_activation: linear or sigmoid"),
    ]
    bad = [msg for failed, msg in problems if failed]
    if bad:
        raise ValueError("PredFormer model: expected " + "; ".join(bad))


def build_model(model_cfg, *, frame_shape, context_frames: int, predict_frames: int) -> keras.Model:
    """Uncompiled PredFormer: (batch, k=context_frames, H, W, C) → (batch, n=predict_frames, H, W, C) float32 (the
    k→k core chained as SimVP's is where n ≠ k)."""
    frame_shape = tuple(int(s) for s in frame_shape)
    check(model_cfg, frame_shape, context_frames, predict_frames)
    core = _core(model_cfg, frame_shape, context_frames)
    return chain_blocks(core, frame_shape, context_frames, predict_frames, name=f"predformer_{model_cfg.preset}")
