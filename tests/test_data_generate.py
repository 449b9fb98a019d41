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


def test_a_bank_is_made_once_per_process_and_read_only(bank):
    """prepare, predict's sample clip and the demo videos share one bank of a size; none can change it."""
    assert mm.load_digit_bank("sklearn", 8) is bank and not bank.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        bank[0, 0, 0] = 1


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


def test_square_int_and_tuple_sizes_give_the_same_clips(bank):
    kw = dict(seed=2, bank=bank, frames=6)
    np.testing.assert_array_equal(mm.generate(4, image_size=16, **kw), mm.generate(4, image_size=(16, 16), **kw))


def test_rectangular_frames_have_shape_and_digits_reach_right_and_bottom(bank):
    clips = mm.generate(4, seed=0, bank=bank, frames=60, image_size=(16, 24))
    assert clips.shape == (4, 60, 16, 24) and clips.dtype == np.uint8
    assert all(clips[i, t].any() for i in range(4) for t in range(60))  # digits never leave the canvas
    assert clips[..., -4:].any() and clips[..., -4:, :].any()  # x spans the width, y the height


def test_rectangular_frames_smaller_than_a_digit_are_a_data_error(bank):
    with pytest.raises(DataError, match="data.image_size"):
        mm.generate(1, seed=0, bank=bank, frames=2, image_size=(4, 24))


@pytest.fixture(scope="module")
def photos():
    return mm.load_photos((16, 24))


def _colour(bank, photos, *, seed=0, split="train", n=3, frames=5, step_length=0.1):
    clips = mm.generate(n, seed=seed, split=split, bank=bank, frames=frames, image_size=(16, 24))
    backgrounds = mm.draw_backgrounds(seed, split, n, len(photos))
    return clips, mm.over_photos(clips, backgrounds, photos, step_length=step_length)


def test_photos_are_rgb_and_larger_than_the_frame(photos):
    k, hp, wp, c = photos.shape
    assert k == 2 and c == 3 and photos.dtype == np.uint8
    assert min(hp, wp) == 48 and wp > 24  # about 2x the frame's longer side, room for the crop to move


def test_over_photos_gives_rgb_clips_of_the_grey_shape(bank, photos):
    clips, colour = _colour(bank, photos)
    assert colour.shape == clips.shape + (3,) and colour.dtype == np.uint8


def test_same_seed_and_split_same_colour_clips(bank, photos):
    np.testing.assert_array_equal(_colour(bank, photos)[1], _colour(bank, photos)[1])


def test_val_and_train_backgrounds_differ(photos):
    train, val = mm.draw_backgrounds(0, "train", 4, len(photos)), mm.draw_backgrounds(0, "val", 4, len(photos))
    assert not np.allclose(train.start, val.start) and not np.allclose(train.theta, val.theta)


def test_background_i_does_not_depend_on_how_many_are_drawn(photos):
    few, many = mm.draw_backgrounds(1, "test", 2, len(photos)), mm.draw_backgrounds(1, "test", 5, len(photos))[:2]
    assert len(many) == 2
    for a, b in [(few.photo, many.photo), (few.start, many.start), (few.theta, many.theta)]:
        np.testing.assert_array_equal(a, b)


def test_background_moves_between_frames(bank, photos):
    clips, colour = _colour(bank, photos, frames=6, step_length=0.5)
    empty = (clips[:, 1:] == 0) & (clips[:, :-1] == 0)  # no digit in either frame
    changed = (colour[:, 1:] != colour[:, :-1]).any(axis=-1) & empty
    assert changed.any(axis=(2, 3)).all()  # every clip, every step


def test_digits_show_white_where_the_grey_clip_is_full(photos):
    clips = np.zeros((2, 3, 16, 24), np.uint8)
    clips[:, :, 4:8, 6:10] = 255
    clips[:, :, 10:12, 2:4] = 128  # half alpha: brighter than the photo, not white
    colour = mm.over_photos(clips, mm.draw_backgrounds(0, "train", 2, len(photos)), photos, step_length=0.1)
    assert (colour[:, :, 4:8, 6:10] == 255).all()
    assert (colour[:, :, 10:12, 2:4] >= 128).all()


def test_grey_clips_do_not_change_when_backgrounds_are_drawn(bank, photos):
    kw = dict(seed=5, split="val", bank=bank, frames=6, image_size=16)
    before = mm.generate(4, **kw)
    mm.over_photos(before, mm.draw_backgrounds(5, "val", 4, len(photos)), photos, step_length=0.1)
    np.testing.assert_array_equal(mm.generate(4, **kw), before)
