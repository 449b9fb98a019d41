"""PredFormer's sizes and cost from its config alone, no Keras: the parameter and FLOP counts nfp doctor and the
benchmarks use, and the memory a training step holds per clip (tests check the counts against the built model:
Keras's count_params() and TensorFlow's profiler)."""

from __future__ import annotations

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's (Keras's default is 1e-3)
ATTENTIONS = ("time", "space", "space", "time")  # a Quadruplet-TSST block: what each of its four layers attends over

# Elementwise FLOPs per element (rough; the matmuls dominate): LayerNorm 8 (its statistics, normalise, scale,
# shift), softmax 5 (max, subtract, exp, sum, divide), SiLU 5 (as TensorFlow's graph has it: a sigmoid and a product),
# adds, products and biases 1, sigmoid 4
_LAYER_NORM, _SOFTMAX, _SILU, _SIGMOID = 8, 5, 5, 4


def tokens(model_cfg, frame_shape) -> int:
    """Patches per frame: (H/p)·(W/p)."""
    h, w, _ = frame_shape
    return (h // model_cfg.patch_size) * (w // model_cfg.patch_size)


def hidden(model_cfg) -> int:
    """The SwiGLU's width: mlp_ratio × width (PredFormer's scale_dim 4: 1024 for 256)."""
    return int(model_cfg.width * model_cfg.mlp_ratio)


def _layer(model_cfg, groups: int, length: int) -> tuple[int, int]:
    """(FLOPs, params) of one gated transformer layer attending over `length` tokens in each of `groups` groups."""
    d, f, heads = model_cfg.width, hidden(model_cfg), model_cfg.heads
    n = groups * length  # tokens
    flops = 3 * n * d * _LAYER_NORM  # pre-attention, pre-MLP and final LayerNorms
    flops += 2 * n * d * 3 * d  # qkv, no bias
    flops += n * d  # q scaled
    flops += groups * heads * (2 * 2 * length * length * (d // heads) + length * length * _SOFTMAX)  # QKᵀ, softmax, AV
    flops += 2 * n * d * d + n * d  # out projection, its bias
    flops += 2 * (2 * n * d * f + n * f) + n * f * (_SILU + 1)  # fc1_g and fc1_x, SiLU(g)·x
    flops += 2 * n * f * d + n * d  # fc2
    flops += 2 * n * d  # two residual adds
    params = 3 * 2 * d + 3 * d * d + d * d + d + 2 * (d * f + f) + f * d + d
    return flops, params


def flops_per_clip(model_cfg, *, frame_shape, context_frames: int, predict_frames: int) -> dict:
    """{"forward": FLOPs of one forward pass over one clip, "train": 3× forward (backward ≈ 2× forward),
    "params": the parameter count Keras's count_params() gives}, from the config alone (no model is built).

    A Dense is 2·tokens·in·out FLOPs plus its bias; attention 2·2·length²·head_dim per head and group. The k→k core
    runs once when n ≤ k, ⌈n/k⌉ times when n > k."""
    h, w, c = (int(s) for s in frame_shape)
    k, n, p, d = context_frames, predict_frames, model_cfg.patch_size, model_cfg.width
    per_frame, patch = tokens(model_cfg, (h, w, c)), p * p * c
    all_tokens = k * per_frame
    flops = 2 * all_tokens * patch * d + 2 * all_tokens * d  # embedding, its bias, the positions added
    params = patch * d + d
    for attends in ATTENTIONS:
        groups, length = (per_frame, k) if attends == "time" else (k, per_frame)
        layer_flops, layer_params = _layer(model_cfg, groups, length)
        flops, params = flops + model_cfg.blocks * layer_flops, params + model_cfg.blocks * layer_params
    flops += all_tokens * d * _LAYER_NORM + 2 * all_tokens * d * patch + all_tokens * patch  # the head
    params += 2 * d + d * patch + patch
    if model_cfg.output_activation == "sigmoid":
        flops += all_tokens * patch * _SIGMOID
    forward = flops * (1 if n <= k else -(-n // k))
    return {"forward": forward, "train": 3 * forward, "params": params}


def train_bytes_per_clip(model_cfg, *, frame_shape, context_frames: int, predict_frames: int, value_bytes: int) -> int:
    """About what one clip holds on the device during a training step: the activations the backward pass keeps
    (per layer: its input and norms, q, k and v, the attention scores and their softmax, the attention output and
    projection, the SwiGLU's three wide tensors and fc2's output), `value_bytes` each (4 float32, 2 bfloat16), the
    scores 4 bytes each whatever the precision. The spatial attention's scores grow with the square of the patches
    per frame: (H/p)²·(W/p)² per head and frame."""
    k, d, f, heads = context_frames, model_cfg.width, hidden(model_cfg), model_cfg.heads
    per_frame = tokens(model_cfg, frame_shape)
    n = k * per_frame
    values = scores = 0
    for attends in ATTENTIONS:
        groups, length = (per_frame, k) if attends == "time" else (k, per_frame)
        values += 10 * n * d + 3 * n * f
        scores += 2 * groups * heads * length * length
    values = model_cfg.blocks * values + 4 * n * d  # and the embedding's and head's
    blocks = 1 if predict_frames <= k else -(-predict_frames // k)
    # the scores and their softmax stay float32 under mixed precision (Keras's dot_product_attention on TensorFlow)
    return blocks * (values * value_bytes + model_cfg.blocks * scores * 4)
