"""PredRNN-V2 as a Keras 3 layer, channels-last, in keras.ops only (TensorFlow and JAX backends).

Follows OpenSTL (chengtan9907/OpenSTL) with the same parameter count (23,855,104 at 64×64×1, patch 4, 4 × 128, 5×5):
- openstl/modules/predrnnv2_modules.py SpatioTemporalLSTMCellv2: conv_x (x → 7 gates' parts), conv_h (h → 4),
  conv_m (m → 3), conv_o and a 1×1 conv_last on [c, m], no biases (layer_norm 0, as its Moving MNIST config), the
  forget gates +1;
- openstl/models/predrnnv2_model.py: the spatiotemporal memory M zigzags up the layers within a step and from the
  top layer to the bottom one at the next; a 1×1 head (conv_last) predicts the next patch grid; one 1×1 adapter
  (no bias) shared by every layer maps the increments Δc and Δm, each L2-normalised over the grid; the decoupling
  loss is the mean |cosine| between them over clips, channels, layers and steps, weighted by β (decouple_beta);
- openstl/utils/predrnn_utils.py reserve_schedule_sampling_exp: the reverse scheduled sampling (cost.py).

Where it differs: frames are (batch, time, h, w, p·p·C) patch grids (nfp.models.convlstm.layers.SpaceToDepth, the
same order as OpenSTL's reshape_patch); c and m are float32 whatever the compute dtype (as the ConvLSTM's state);
the decoupling loss joins the model's losses (as `add_loss` would, kept per replica) and is reported as the
`decoupling` metric (training and validation).
"""

from __future__ import annotations

import threading

import keras
from keras import ops

from nfp.models.convlstm import layers as convlstm_layers  # time_loop looked up when called: tests patch it
from nfp.models.convlstm.layers import torch_default_init

FORGET_BIAS = 1.0  # SpatioTemporalLSTMCellv2._forget_bias


@keras.saving.register_keras_serializable(package="nfp")
class PredRNNv2Stack(keras.layers.Layer):
    """ST-LSTM layers stepped together through time with the zigzag memory, and a 1×1 head predicting the next frame
    at each step: (batch, time, h, w, c) → (batch, time, h, w, c) float32; output t predicts frame t+1 from inputs
    0..t.

    Training feeds each step's input as OpenSTL's reverse scheduled sampling draws it, per clip and step: a context
    step (1..context_frames−1) the true frame with probability r_eta, a predicted step (context_frames..) with eta,
    else the model's own previous prediction (cost.reverse_sampling_probabilities of the training step, counted in
    the non-trainable `sampling_step`, which checkpoints and backups carry: a resumed run continues the schedule's
    probabilities; the draws come from a SeedGenerator, as the ConvLSTM's scheduled sampling's: a resumed run draws
    from its seed again, and the replicas of a MirroredStrategy draw alike).
    Evaluation is teacher-forced (one-step predictions); `free_run_after` k feeds predictions from step k on."""

    def __init__(self, filters, kernel_sizes, *, output_activation="linear", decouple_beta=0.1,
                 reverse_sampling=(25000, 50000), reverse_sampling_alpha=5000.0, context_frames=10, seed=None,
                 **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        if len(set(filters)) != 1 or len(filters) != len(kernel_sizes):
            raise ValueError(f"PredRNNv2Stack: one hidden size for every layer (M passes between them); got {filters}")
        self.filters, self.kernel_sizes = list(filters), list(kernel_sizes)
        self.output_activation, self.decouple_beta = output_activation, float(decouple_beta)
        self.reverse_sampling, self.reverse_sampling_alpha = list(reverse_sampling), float(reverse_sampling_alpha)
        self.context_frames, self.seed = context_frames, seed
        self._out_act = keras.activations.get(output_activation)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.decoupling = keras.metrics.Mean(name="decoupling")
        self._replica = threading.local()  # the decoupling loss of this thread's call (see _get_own_losses)

    def build(self, input_shape):
        channels, units = input_shape[-1], self.filters[0]
        self._strategy = _current_strategy()  # the one the variables (and the metric's) belong to
        self.cells = []
        for i, k in enumerate(self.kernel_sizes):
            inputs = channels if i == 0 else units
            shapes = {"x": (k, k, inputs, 7 * units), "h": (k, k, units, 4 * units), "m": (k, k, units, 3 * units),
                      "o": (k, k, 2 * units, units), "last": (1, 1, 2 * units, units)}  # fmt: skip
            self.cells.append(
                [
                    self.add_weight(shape, torch_default_init(), name=f"conv_{part}_{i}")
                    for part, shape in shapes.items()
                ]
            )
        self.head = self.add_weight((1, 1, units, channels), torch_default_init(), name="head")
        self.adapter = self.add_weight((1, 1, units, units), torch_default_init(), name="adapter")
        self.sampling_step = self.add_weight(
            (), "zeros", dtype="int64", trainable=False, name="sampling_step", aggregation="only_first_replica"
        )

    def call(self, frames, training=False, free_run_after=None):
        batch, steps = ops.shape(frames)[0], ops.shape(frames)[1]
        if free_run_after is not None:
            truth = ops.broadcast_to(ops.arange(steps)[None, :] < free_run_after, (batch, steps))
        elif training:
            truth = self._reverse_sampling(batch, steps)
        else:
            truth = ops.ones((batch, steps), "bool")
        outputs, decoupling = self._steps(frames, truth, feedback=bool(training) or free_run_after is not None)
        self._replica.losses = [self.decouple_beta * decoupling] if training else []
        if training:
            self.sampling_step.assign_add(1)
        if self._in_a_step():
            self.decoupling.update_state(decoupling)
        return outputs

    def _in_a_step(self) -> bool:
        """True inside a training or evaluation step of the strategy the metric belongs to; False for a call outside
        it (a callback's rollout on the chief of several workers), where the metric's update would start a
        collective the other workers never join."""
        if keras.backend.backend() != "tensorflow":
            return True
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        return context is not None and context.strategy is self._strategy

    def _get_own_losses(self):
        """add_loss's list, and this thread's decoupling loss. Not add_loss itself: its one list per layer is shared by
        the replicas of a MirroredStrategy, which trace their steps in threads of their own and each clear it when
        their call begins, so a replica would read another's loss (and Keras would find no gradient for the adapter
        on the first). Keras adds the losses to the compiled loss and scales them for the replicas."""
        return [*super()._get_own_losses(), *getattr(self._replica, "losses", [])]

    def _reverse_sampling(self, batch, steps):
        """(batch, steps) bool: step 0 the true frame; context steps with r_eta, predicted steps with eta."""
        start, end = self.reverse_sampling
        step = ops.cast(self.sampling_step, "float32")
        r_eta, eta = (
            ops.where(step < start, 0.5, ops.where(step < end, value, final))
            for value, final in (
                (1.0 - 0.5 * ops.exp(-(step - start) / self.reverse_sampling_alpha), 1.0),
                (0.5 - 0.5 / max(end - start, 1) * (step - start), 0.0),
            )
        )
        t = ops.arange(steps)[None, :]
        threshold = ops.where(t < self.context_frames, r_eta, eta)
        draws = keras.random.uniform((batch, steps), seed=self.seed_generator)
        return ops.logical_or(t == 0, draws < threshold)

    def _steps(self, frames, truth, *, feedback: bool):
        """→ ((batch, time, h, w, c) float32 predictions, the decoupling loss: a float32 scalar)."""
        dtype = self.compute_dtype
        cells = [[ops.cast(w, dtype) for w in cell] for cell in self.cells]
        head, adapter = ops.cast(self.head, dtype), ops.cast(self.adapter, "float32")
        batch, grid, channels, units = ops.shape(frames)[0], frames.shape[2:4], frames.shape[-1], self.filters[0]
        layers = len(cells)

        def zeros(dt, width=units):
            return ops.zeros((batch, *grid, width), dt)

        # per layer h (compute dtype) and c (float32); then M (float32), the previous prediction, the decoupling sum
        carry = (*(s for _ in cells for s in (zeros(dtype), zeros("float32"))), zeros("float32"),
                 zeros("float32", channels), ops.zeros((), "float32"))  # fmt: skip

        def conv(x, kernel):
            return ops.cast(ops.conv(x, kernel, padding="same"), "float32")

        def unit_columns(delta):
            """The adapter's output, L2-normalised over the grid per clip and channel: (batch, h·w, units)."""
            flat = ops.reshape(ops.conv(delta, adapter, padding="same"), (batch, -1, units))
            return flat / ops.maximum(ops.sqrt(ops.sum(ops.square(flat), axis=1, keepdims=True)), 1e-12)

        def step(carry, inputs):
            frame, use_truth = inputs
            states, m, previous, decoupled = carry[: 2 * layers], carry[-3], carry[-2], carry[-1]
            x = ops.where(use_truth[:, None, None, None], frame, ops.cast(previous, dtype)) if feedback else frame
            new_states, cosines = [], []
            for (k_x, k_h, k_m, k_o, k_last), h, c in zip(cells, states[0::2], states[1::2]):
                i_x, f_x, g_x, i_xp, f_xp, g_xp, o_x = ops.split(conv(x, k_x), 7, axis=-1)
                i_h, f_h, g_h, o_h = ops.split(conv(h, k_h), 4, axis=-1)
                i_m, f_m, g_m = ops.split(conv(ops.cast(m, dtype), k_m), 3, axis=-1)
                delta_c = ops.sigmoid(i_x + i_h) * ops.tanh(g_x + g_h)
                c = ops.sigmoid(f_x + f_h + FORGET_BIAS) * c + delta_c
                delta_m = ops.sigmoid(i_xp + i_m) * ops.tanh(g_xp + g_m)
                m = ops.sigmoid(f_xp + f_m + FORGET_BIAS) * m + delta_m
                memory = ops.cast(ops.concatenate([c, m], axis=-1), dtype)
                o = ops.sigmoid(o_x + o_h + conv(memory, k_o))
                x = h = ops.cast(o * ops.tanh(conv(memory, k_last)), dtype)
                new_states += [h, c]
                cosine = ops.sum(unit_columns(delta_c) * unit_columns(delta_m), axis=1)  # (batch, units)
                cosines.append(ops.mean(ops.abs(cosine)))
            prediction = self._out_act(ops.cast(ops.conv(x, head, padding="valid"), "float32"))
            return (*new_states, m, prediction, decoupled + ops.mean(ops.stack(cosines)))

        time_major = (ops.moveaxis(ops.cast(frames, dtype), 1, 0), ops.moveaxis(truth, 1, 0))
        stacked = convlstm_layers.time_loop(step, carry, time_major)
        decoupling = stacked[-1][-1] / ops.cast(ops.shape(frames)[1], "float32")  # the mean over steps
        return ops.moveaxis(stacked[-2], 0, 1), decoupling

    def compute_output_shape(self, shape):
        return shape

    def compute_output_spec(self, frames, training=False, free_run_after=None):
        return keras.KerasTensor(frames.shape, dtype="float32")

    def get_config(self):
        return {
            **super().get_config(), "filters": self.filters, "kernel_sizes": self.kernel_sizes,
            "output_activation": self.output_activation, "decouple_beta": self.decouple_beta,
            "reverse_sampling": self.reverse_sampling, "reverse_sampling_alpha": self.reverse_sampling_alpha,
            "context_frames": self.context_frames, "seed": self.seed,
        }  # fmt: skip


def _current_strategy():
    """TensorFlow's distribution strategy in scope (its default one outside any); None on other backends."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    return tf.distribute.get_strategy()


def build_model(model_cfg, *, frame_shape, context_frames: int):
    """Uncompiled PredRNN-V2: (batch, time, H, W, C) → (batch, time, H, W, C) float32, any clip length."""
    from nfp.models.convlstm.layers import DepthToSpace, SpaceToDepth

    h, w, c = (int(s) for s in frame_shape)
    p = model_cfg.patch_size
    frames = keras.Input(shape=(None, h, w, c), name="frames")
    x = SpaceToDepth(p, name="to_patches")(frames) if p > 1 else frames
    x = PredRNNv2Stack(
        model_cfg.filters, model_cfg.kernel_sizes, output_activation=model_cfg.output_activation,
        decouple_beta=model_cfg.decouple_beta, reverse_sampling=model_cfg.reverse_sampling,
        reverse_sampling_alpha=model_cfg.reverse_sampling_alpha, context_frames=context_frames, name="predrnn_v2",
    )(x)  # fmt: skip
    y = DepthToSpace(p, dtype="float32", name="next_frame")(x) if p > 1 else x
    return keras.Model(frames, y, name=f"predrnn_{model_cfg.preset}")


def free_run(model, frames, free_run_after: int):
    """The model's output when, from step `free_run_after` on, its inputs are its own predictions."""
    x = frames
    for layer in model.layers[1:]:  # to_patches, the stack, next_frame: a chain (build_model)
        x = layer(x, free_run_after=free_run_after) if isinstance(layer, PredRNNv2Stack) else layer(x)
    return x
