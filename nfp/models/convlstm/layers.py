"""The Keras layers nfp's models are made of, in keras.ops only (they run on the TensorFlow and JAX backends).

- SpaceToDepth / DepthToSpace: frames ↔ patches (OpenSTL's reshape_patch), so the recurrent stack
  works on a p×-smaller grid with p² channels.
- ConvLSTMStack: OpenSTL's ConvLSTM cell, all layers stepped together through time with a 1×1 head
  that predicts the next frame at every step. Unlike keras.layers.ConvLSTM2D it keeps the cell state
  in float32 under mixed precision (as PyTorch autocast does) and can feed its own predictions back
  during training (scheduled sampling). Its time loop (`time_loop`) is bounded, so XLA compiles it.

Imported when a model is built or loaded (nfp.models.register_layers); importing it registers the layers for
`keras.saving.load_model`.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="nfp")
class SpaceToDepth(keras.layers.Layer):
    """(batch, time, H, W, C) → (batch, time, H/p, W/p, p·p·C): each p×p patch of a frame becomes channels."""

    def __init__(self, patch_size: int, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size

    def call(self, x):
        p, (h, w, c) = self.patch_size, x.shape[2:]
        x = ops.reshape(x, (-1, ops.shape(x)[1], h // p, p, w // p, p, c))
        x = ops.transpose(x, (0, 1, 2, 4, 3, 5, 6))
        return ops.reshape(x, (-1, ops.shape(x)[1], h // p, w // p, p * p * c))

    def compute_output_shape(self, shape):
        p = self.patch_size
        return (shape[0], shape[1], shape[2] // p, shape[3] // p, shape[4] * p * p)

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size}


@keras.saving.register_keras_serializable(package="nfp")
class DepthToSpace(keras.layers.Layer):
    """The inverse of SpaceToDepth: (batch, time, h, w, p·p·C) → (batch, time, h·p, w·p, C)."""

    def __init__(self, patch_size: int, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size

    def call(self, x):
        p, (h, w, pc) = self.patch_size, x.shape[2:]
        c = pc // (p * p)
        x = ops.reshape(x, (-1, ops.shape(x)[1], h, w, p, p, c))
        x = ops.transpose(x, (0, 1, 2, 4, 3, 5, 6))
        return ops.reshape(x, (-1, ops.shape(x)[1], h * p, w * p, c))

    def compute_output_shape(self, shape):
        p = self.patch_size
        return (shape[0], shape[1], shape[2] * p, shape[3] * p, shape[4] // (p * p))

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size}


def torch_default_init():
    """U(±1/√fan_in), the init of PyTorch's Conv2d that OpenSTL's cell trains from."""
    return keras.initializers.VarianceScaling(scale=1 / 3, mode="fan_in", distribution="uniform")


@keras.saving.register_keras_serializable(package="nfp")
class ConvLSTMStack(keras.layers.Layer):
    """Stacked ConvLSTM cells stepped together through time, and a 1×1 head predicting the next frame at each step.

    (batch, time, h, w, c) frames → (batch, time, h, w, c) float32 predictions; output t is the prediction
    of frame t+1 and depends on inputs 0..t only. Per cell and step (OpenSTL's layout, one convolution
    over [x, h] instead of conv_x(x) + conv_h(h), which is the same sum):

        i, f, g, o = split(conv_k×k([x, h]) + b);  c = σ(f)·c + σ(i)·act(g);  h = σ(o)·act(c)

    The gates and c are float32 whatever the compute dtype (the convolutions run in it): under
    mixed precision a bf16/fp16 cell state loses what the forget gate keeps over the steps.

    Scheduled sampling (training only, `sampling_steps` > 0): from step `context_frames` on, each
    clip's input frame is the true one with probability η, else the model's own previous prediction;
    η falls linearly from 1 to 0 over `sampling_steps` training steps (OpenSTL trains ConvLSTM so),
    counted in the non-trainable `sampling_step` variable, which checkpoints and backups carry.
    """

    def __init__(
        self,
        filters,
        kernel_sizes,
        *,
        activation="tanh",
        output_activation="linear",
        sampling_steps=0,
        context_frames=10,
        seed=None,
        jit_compile=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters, self.kernel_sizes = list(filters), list(kernel_sizes)
        self.activation, self.output_activation = activation, output_activation
        self.sampling_steps, self.context_frames, self.seed = sampling_steps, context_frames, seed
        self._act, self._out_act = keras.activations.get(activation), keras.activations.get(output_activation)
        self.seed_generator = keras.random.SeedGenerator(seed)
        # True: the steps through time run as one XLA function of the weights' values (TensorFlow, clips of a known
        # length). For replicated training, where Keras cannot compile the whole step: an XLA function that reads
        # the variables of a MirroredStrategy fails on every replica but the first (keras-team/keras#19005).
        # Passed by nfp.models.convlstm.model.build_model, not saved: where a loaded model runs, its own devices decide.
        self.jit_compile = jit_compile

    def build(self, input_shape):
        channels = input_shape[-1]
        self.cells = []
        for i, (units, k) in enumerate(zip(self.filters, self.kernel_sizes)):
            inputs = channels if i == 0 else self.filters[i - 1]
            kernel_x = self.add_weight((k, k, inputs, 4 * units), torch_default_init(), name=f"kernel_x_{i}")
            kernel_h = self.add_weight((k, k, units, 4 * units), torch_default_init(), name=f"kernel_h_{i}")
            # forget gate starts at 1 (open): the state carries over from the first steps
            bias = self.add_weight((4 * units,), _forget_bias_one(units), name=f"bias_{i}")
            self.cells.append((kernel_x, kernel_h, bias))
        self.head = self.add_weight((1, 1, self.filters[-1], channels), torch_default_init(), name="head_kernel")
        self.head_bias = self.add_weight((channels,), "zeros", name="head_bias")
        self.sampling_step = self.add_weight(
            (), "zeros", dtype="int64", trainable=False, name="sampling_step",  # int32 variables stay on the host,
            # where an XLA step on a GPU cannot read them (tensorflow.org/xla/known_issues)
            aggregation="only_first_replica",  # every replica counts the same steps
        )  # fmt: skip

    def call(self, frames, training=False, free_run_after=None):
        """`free_run_after` k (a Python int): from step k on, the inputs are the layer's own predictions, so a whole
        rollout takes one pass instead of one per predicted frame (nfp.models.convlstm.model.rollout)."""
        batch, steps = ops.shape(frames)[0], ops.shape(frames)[1]
        sampling = bool(training) and self.sampling_steps > 0
        feedback = sampling or free_run_after is not None
        if free_run_after is not None:
            truth = ops.broadcast_to(ops.arange(steps)[None, :] < free_run_after, (batch, steps))
        else:
            truth = self._use_truth(batch, steps) if sampling else ops.ones((batch, steps), "bool")
        # Read once here: the XLA function gets values, not variables (see __init__'s jit_compile)
        weights = [ops.copy(w) for w in self.step_weights]
        if self.jit_compile and frames.shape[1] is not None:
            outputs = self._xla_steps(feedback)(frames, truth, weights)
        else:
            outputs = self._steps(frames, truth, weights, feedback=feedback)
        if sampling:
            self.sampling_step.assign_add(1)
        return outputs

    @property
    def step_weights(self) -> list:
        """The variables `_steps` takes, in its order: each cell's kernel_x, kernel_h, bias, then the head's kernel, bias."""
        return [*(w for cell in self.cells for w in cell), self.head, self.head_bias]

    def _xla_steps(self, feedback: bool):
        """`_steps` as one XLA function of tensors (TensorFlow), made once per feedback mode."""
        import tensorflow as tf

        functions = self.__dict__.setdefault("_xla_functions", {})
        if feedback not in functions:
            functions[feedback] = tf.function(
                lambda frames, truth, weights: self._steps(frames, truth, weights, feedback=feedback),
                jit_compile=True, reduce_retracing=True,
            )  # fmt: skip
        return functions[feedback]

    def _steps(self, frames, truth, weights, *, feedback: bool):
        """The cells stepped through time: (batch, time, h, w, c) frames and (batch, time) bool "feed the true frame"
        → (batch, time, h, w, c) float32 predictions. `weights`: the values of `step_weights`."""
        dtype = self.compute_dtype
        layers = [weights[i : i + 3] for i in range(0, 3 * len(self.filters), 3)]
        # conv([x, h]) = conv_x(x) + conv_h(h): one convolution per cell and step
        kernels = [(ops.cast(ops.concatenate([kx, kh], axis=2), dtype), ops.cast(b, "float32")) for kx, kh, b in layers]
        head, head_bias = ops.cast(weights[-2], dtype), ops.cast(weights[-1], "float32")
        batch, grid, channels = ops.shape(frames)[0], frames.shape[2:4], frames.shape[-1]
        carry = []
        for units in self.filters:
            carry += [ops.zeros((batch, *grid, units), dtype), ops.zeros((batch, *grid, units), "float32")]
        carry.append(ops.zeros((batch, *grid, channels), "float32"))  # the previous prediction

        def step(carry, inputs):
            frame, use_truth = inputs
            states, previous = carry[:-1], carry[-1]
            x = ops.where(use_truth[:, None, None, None], frame, ops.cast(previous, dtype)) if feedback else frame
            new_states = []
            for (kernel, bias), h, c in zip(kernels, states[0::2], states[1::2]):
                z = ops.cast(ops.conv(ops.concatenate([x, h], axis=-1), kernel, padding="same"), "float32") + bias
                i, f, g, o = ops.split(z, 4, axis=-1)
                c = ops.sigmoid(f) * c + ops.sigmoid(i) * self._act(g)
                x = h = ops.cast(ops.sigmoid(o) * self._act(c), dtype)
                new_states += [h, c]
            prediction = ops.cast(ops.conv(x, head, padding="valid"), "float32") + head_bias
            return (*new_states, self._out_act(prediction))

        time_major = (ops.moveaxis(ops.cast(frames, dtype), 1, 0), ops.moveaxis(truth, 1, 0))
        return ops.moveaxis(time_loop(step, tuple(carry), time_major)[-1], 0, 1)

    def _use_truth(self, batch, steps):
        """(batch, steps) bool: feed the true frame (always before context_frames), else the last prediction."""
        eta = ops.clip(1.0 - ops.cast(self.sampling_step, "float32") / self.sampling_steps, 0.0, 1.0)
        draws = keras.random.uniform((batch, steps), seed=self.seed_generator)
        in_context = ops.arange(steps)[None, :] < self.context_frames
        return ops.logical_or(in_context, draws < eta)

    def compute_output_shape(self, shape):
        return shape

    def compute_output_spec(self, frames, training=False, free_run_after=None):
        return keras.KerasTensor(frames.shape, dtype="float32")

    def get_config(self):
        return {
            **super().get_config(), "filters": self.filters, "kernel_sizes": self.kernel_sizes,
            "activation": self.activation, "output_activation": self.output_activation,
            "sampling_steps": self.sampling_steps, "context_frames": self.context_frames, "seed": self.seed,
        }  # fmt: skip


def _forget_bias_one(units: int):
    """Gate biases (i, f, g, o) at 0, 1, 0, 0."""

    def init(shape, dtype=None):
        return ops.cast(ops.concatenate([ops.zeros((units,)), ops.ones((units,)), ops.zeros((2 * units,))]), dtype)

    return init


def time_loop(step, carry, xs):
    """`step(carry, x_t) → carry` over time-major `xs` (a tuple of (time, …) tensors): each step's carry, stacked.

    A loop XLA can compile on every backend. On TensorFlow, a known length runs as plain Python steps (no while
    loop: an XLA function holding one cannot be differentiated from outside it: "TensorList crossing the XLA/TF
    boundary") and an unknown one as tf.scan, whose while loop is bounded by the length: XLA sizes the gradient's
    accumulators from that bound, which Keras's TF ops.scan leaves unset ("XLA compilation requires a fixed tensor
    list size"). On JAX, ops.scan (lax.scan) is bounded already.
    """
    if keras.backend.backend() != "tensorflow":
        return ops.scan(lambda c, x: (step(c, x),) * 2, carry, xs)[1]
    length = xs[0].shape[0]
    if length is None:
        import tensorflow as tf

        return tf.scan(step, xs, initializer=carry)
    outputs = []
    for t in range(length):
        carry = step(carry, tuple(x[t] for x in xs))
        outputs.append(carry)
    return tuple(ops.stack(column) for column in zip(*outputs))
