"""SimVP's sizes and cost from its config alone, no Keras: the block layout OpenSTL builds (shared with layers.py)
and the analytic FLOP and parameter counts nfp doctor and the benchmarks use (tests check them against the built
model: Keras's count_params() and TensorFlow's profiler)."""

from __future__ import annotations

LKA_KERNEL, LKA_DILATION = 21, 3  # MetaBlock builds GASubBlock / TAUSubBlock with kernel_size=21; dilation 3
LAYER_SCALE_INIT = 1e-2  # GASubBlock init_value
SE_REDUCTION = 16  # TemporalAttentionModule reduction


def lka_kernels(kernel_size: int = LKA_KERNEL, dilation: int = LKA_DILATION) -> tuple[int, int]:
    """AttentionModule's decomposition of a kernel_size×kernel_size conv: a (2d−1)² depthwise conv, then a
    depthwise conv of dilation d whose span covers the rest (21, 3 → 5×5, then 7×7 dilated 3)."""
    dd_k = kernel_size // dilation + ((kernel_size // dilation) % 2 - 1)
    return 2 * dilation - 1, dd_k


def se_hidden(dim: int) -> int:
    """TemporalAttentionModule's squeeze width: dim // max(dim // 16, 4) (16 for dims ≥ 64)."""
    return dim // max(dim // SE_REDUCTION, 4)


def sampling_generator(n: int, reverse: bool = False) -> list[bool]:
    """Which ConvSC blocks stride (encoder) or up-sample (decoder, reversed): every second one."""
    samplings = ([False, True] * (n // 2))[:n]
    return list(reversed(samplings)) if reverse else samplings


# Elementwise FLOPs per output element (rough; the convolutions dominate): conv bias 1; GroupNorm and BatchNorm
# (inference: normalise, scale, shift, plus GroupNorm's statistics) 6 and 2; SiLU 2, GELU 6 (erf form), sigmoid 2,
# adds and products 1; LayerScale 1.
_BIAS, _GROUP_NORM, _BATCH_NORM, _SILU, _GELU, _SIGMOID = 1, 6, 2, 2, 6, 2


def _conv(hw: int, k: int, c_in: int, c_out: int, groups: int = 1, bias: bool = True) -> tuple[int, int]:
    """(FLOPs, params) of a k×k conv producing hw positions (a multiply-add = 2 FLOPs)."""
    flops = 2 * hw * k * k * c_in * c_out // groups + (hw * c_out if bias else 0)
    return flops, k * k * c_in * c_out // groups + (c_out if bias else 0)


def _sub_block_cost(hw: int, d: int, model_cfg) -> tuple[int, int]:
    """(FLOPs, params) of one GASubBlock / TAUSubBlock on d channels at hw positions."""
    k0, k1 = lka_kernels()
    hidden = int(d * model_cfg.mlp_ratio)
    gsta = model_cfg.translator == "gsta"
    parts = [
        _conv(hw, 1, d, d),  # proj_1
        _conv(hw, k0, d, d, d),  # conv0
        _conv(hw, k1, d, d, d),  # conv_spatial
        _conv(hw, 1, d, 2 * d if gsta else d),  # conv1
        _conv(hw, 1, d, d),  # proj_2
        _conv(hw, 1, d, hidden),  # MixMlp fc1
        _conv(hw, 3, hidden, hidden, hidden),  # MixMlp dwconv
        _conv(hw, 1, hidden, d),  # MixMlp fc2
    ]
    flops, params = sum(f for f, _ in parts), sum(p for _, p in parts)
    flops += hw * d * (2 * _BATCH_NORM + _GELU + 1 + 2 * 2)  # norms, GELU, attention shortcut, 2×(scale, add)
    flops += hw * hidden * _GELU
    params += 2 * 4 * d + 2 * d  # two BatchNorms (γ, β, moving mean and variance), two layer scales
    if gsta:
        flops += hw * d * (_SIGMOID + 1)  # the gate
    else:
        r = se_hidden(d)
        flops += hw * d * 3 + 2 * d * r * 2 + d * _SIGMOID  # pool, two products; the SE's two Linears
        params += 2 * d * r
    return flops, params


def flops_per_clip(model_cfg, *, frame_shape, context_frames: int, predict_frames: int) -> dict:
    """{"forward": FLOPs of one forward pass over one clip, "train": 3× forward (backward ≈ 2× forward),
    "params": the parameter count Keras's count_params() gives}, from the config alone (no model is built).

    A k×k conv is 2·H_out·W_out·k²·C_in·C_out/groups FLOPs plus its bias; norms and activations add the rough
    per-element constants above. The k→k core runs once when n ≤ k, ⌈n/k⌉ times when n > k."""
    h, w, c = (int(d) for d in frame_shape)
    k, n = context_frames, predict_frames
    s, t = model_cfg.spatial_channels, model_cfg.temporal_channels
    flops = params = 0

    def add(cost, times=1):
        nonlocal flops, params
        flops, params = flops + cost[0] * times, params + cost[1]

    norm_act = _GROUP_NORM + _SILU
    hw, c_in = h * w, c
    for down in sampling_generator(model_cfg.encoder_blocks):  # per frame, k frames
        hw = hw // 4 if down else hw
        add(_conv(hw, model_cfg.encoder_kernel, c_in, s), k)
        add((hw * s * norm_act, 2 * s), k)
        c_in = s
    n_t = model_cfg.translator_blocks
    for i in range(n_t):  # once per clip, on the k frames' latents stacked as channels
        d_in, d_out = (k * s if i == 0 else t), (k * s if i == n_t - 1 else t)
        add(_sub_block_cost(hw, d_in, model_cfg))
        if d_in != d_out:
            add(_conv(hw, 1, d_in, d_out))
    for up in sampling_generator(model_cfg.encoder_blocks, reverse=True):  # per frame
        add(_conv(hw, model_cfg.decoder_kernel, s, 4 * s if up else s), k)
        hw = hw * 4 if up else hw
        add((hw * s * norm_act, 2 * s), k)
    add((hw * s, 0), k)  # the skip
    add(_conv(hw, 1, s, c), k)  # readout
    if model_cfg.output_activation == "sigmoid":
        add((hw * c * _SIGMOID, 0), k)
    forward = flops * (1 if n <= k else -(-n // k))
    return {"forward": forward, "train": 3 * forward, "params": params}
