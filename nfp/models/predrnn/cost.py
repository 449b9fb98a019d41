"""PredRNN-V2's sizes and cost from its config alone, no Keras: the parameter and FLOP counts nfp doctor and the
benchmarks use (tests check them against the built model: Keras's count_params() and TensorFlow's profiler), and the
reverse scheduled sampling's two probabilities (as OpenSTL computes them; tests check the layer's draws against them)."""

from __future__ import annotations

import math

# Elementwise FLOPs per element (rough; the convolutions dominate): sigmoid 4, tanh 4, adds and products 1
_SIGMOID, _TANH = 4, 4


def reverse_sampling_probabilities(step: float, start: int, end: int, alpha: float) -> tuple[float, float]:
    """(r_eta, eta) at training step `step` (OpenSTL predrnn_utils.reserve_schedule_sampling_exp): the probability
    that a context step's input is the true frame, 0.5 until `start`, then 1 − 0.5·exp(−(step − start)/alpha), 1 from
    `end`; and that a predicted step's input is, 0.5 until `start`, falling linearly to 0 at `end`."""
    if step < start:
        return 0.5, 0.5
    if step < end:
        return 1.0 - 0.5 * math.exp(-(step - start) / alpha), 0.5 - 0.5 / (end - start) * (step - start)
    return 1.0, 0.0


def flops_per_clip(model_cfg, *, frame_shape, frames: int) -> dict:
    """{"forward": FLOPs of one forward pass over a clip of `frames` input frames, "train": 3× forward, "params":
    Keras's count_params()}. A k×k conv without bias is 2·positions·k²·C_in·C_out FLOPs; per layer and step the
    ST-LSTM's five convolutions, its gates, and the decoupling loss's adapter on both increments."""
    h, w, c = (int(s) for s in frame_shape)
    p, units = model_cfg.patch_size, model_cfg.filters[0]
    hw, channels = (h // p) * (w // p), p * p * c
    flops = params = 0
    for i, k in enumerate(model_cfg.kernel_sizes):
        inputs = channels if i == 0 else units
        weights = k * k * (inputs * 7 * units + units * 4 * units + units * 3 * units + 2 * units * units)
        weights += 2 * units * units  # conv_last, 1×1
        params += weights
        flops += 2 * hw * weights
        # gates: 3 sums of x, h (and m) parts per gate pair, 5 sigmoids, 3 tanh, the products and sums of c and m
        flops += hw * units * (14 + 5 * _SIGMOID + 3 * _TANH + 8)
        flops += 2 * (2 * hw * units * units) + 2 * hw * units * 6  # the adapter on Δc and Δm, their normalised cosine
    head = units * channels
    params += head + units * units + 1  # the head, the adapter, the sampling step counter (Keras counts it)
    flops += 2 * hw * head
    return {"forward": flops * frames, "train": 3 * flops * frames, "params": params}
