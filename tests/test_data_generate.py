"""Moving MNIST generator: OpenSTL's recipe, deterministic per seed, independent per split."""

import numpy as np
import pytest

from nfp.data import moving_mnist as mm
from nfp.errors import DataError


@pytest.fixture(scope="module")
def bank():
    return mm.load_digit_bank("sklearn", 8)


def test_sklearn_bank_is_uint8_digits_of_digit_size(bank):
    assert bank.shape == (1797, 8, 8) and bank.dtype == np.uint8
    assert bank.max() > 200 and bank[:, 0, :].max() == 0  # bright strokes, empty MNIST-style margin


def test_clips_have_shape_dtype_and_range(bank):
    clips = mm.generate(5, seed=0, bank=bank, frames=6, image_size=16)
    assert clips.shape == (5, 6, 16, 16) and clips.dtype == np.uint8
    assert clips.max() > 200 and clips.min() == 0
    assert all(clips[i, t].any() for i in range(5) for t in range(6))  # digits never leave the canvas


def test_same_seed_same_clips_other_seed_other_clips(bank):
    kw = dict(bank=bank, frames=6, image_size=16)
    np.testing.assert_array_equal(mm.generate(4, seed=3, **kw), mm.generate(4, seed=3, **kw))
    assert not np.array_equal(mm.generate(4, seed=3, **kw), mm.generate(4, seed=4, **kw))


def test_splits_draw_from_independent_streams(bank):
    kw = dict(seed=0, bank=bank, frames=6, image_size=16)
    train, val = mm.generate(4, split="train", **kw), mm.generate(4, split="val", **kw)
    assert not any(np.array_equal(a, b) for a in train for b in val)


def test_clip_i_does_not_depend_on_how_many_are_drawn(bank):
    kw = dict(seed=1, bank=bank, frames=6, image_size=16)
    np.testing.assert_array_equal(mm.generate(3, **kw), mm.generate(8, **kw)[:3])


def test_digits_bounce_with_openstl_steps():
    params = mm.ClipParams(start=np.array([[[0.95, 0.5]]]), theta=np.array([[0.0]]), digit=np.array([[0]]))
    xy = mm.trajectories(params, frames=4, step_length=0.1)[0, 0]
    np.testing.assert_allclose(xy[:, 0], [1.0, 0.9, 0.8, 0.7])  # clamped at the wall, then flipped
    np.testing.assert_allclose(xy[:, 1], 0.5)


def test_digits_combine_with_maximum():
    bank = np.full((1, 4, 4), 100, np.uint8)
    params = mm.ClipParams(start=np.zeros((1, 2, 2)), theta=np.full((1, 2), np.pi * 1.25), digit=np.zeros((1, 2), int))
    clip = mm.render(params, bank, frames=1, image_size=8, step_length=0.1)
    assert clip.max() == 100  # overlapping digits do not add up


def test_mnist_bank_offline_is_a_clear_data_error(monkeypatch):
    import keras

    def offline():
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3]")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(DataError, match="data.digit_bank=mnist"):
        mm.load_digit_bank("mnist", 28)
