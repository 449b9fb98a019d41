"""Pictures: strips line frames up in three rows, GIFs hold every frame, curves render."""

import io

import numpy as np
from PIL import Image

from nfp import visualize


def test_labelled_rows_wrap_long_rows_and_scale_frames():
    rows = [("context", np.full((3, 8, 8), 0.2, np.float32)), ("prediction", np.ones((25, 8, 8), np.float32))]
    image = visualize.labelled_rows(rows, scale=2, wrap=10)
    pitch = 16 + 2  # a frame scaled 2× and the gap after it
    assert image.dtype == np.uint8
    assert image.shape == (4 * pitch - 2, visualize.LABEL_PX + 10 * pitch - 2)  # 1 + 3 lines (25 → 10, 10, 5)
    left = visualize.LABEL_PX
    assert (image[0:16, left : left + 16] == 51).all() and (image[pitch : pitch + 16, left : left + 16] == 255).all()


def test_gif_has_one_frame_per_time_step(tmp_path):
    frames = visualize.side_by_side_frames(np.random.rand(7, 8, 8), np.random.rand(7, 8, 8))
    path = visualize.write_gif(frames, tmp_path / "clip.gif")
    with Image.open(path) as gif:
        assert gif.n_frames == 7
        assert gif.size == (2 * (8 + 8 + 2), 2 * (8 + 2))  # + the 2-px time bar
    assert not list(tmp_path.glob("*.tmp.gif"))


def test_gif_keeps_every_frame_of_a_static_clip(tmp_path):
    with Image.open(visualize.write_gif(np.zeros((5, 8, 8), np.uint8), tmp_path / "static.gif")) as gif:
        assert gif.n_frames == 5


def test_history_figure_renders_losses_and_lr():
    fig = visualize.history_figure({"loss": [1.0, 0.5], "val_loss": [1.1, 0.6], "learning_rate": [1e-3, 5e-4]})
    loss_ax, lr_ax = fig.axes
    assert {line.get_label() for line in loss_ax.get_lines()} == {"loss", "val_loss"}
    assert len(lr_ax.get_lines()) == 1
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue().startswith(b"\x89PNG")


def test_labelled_rows_scale_small_frames_and_wrap_long_rows():
    rows = [("context", np.zeros((12, 16, 16), np.uint8)), ("truth", np.full((3, 16, 16), 255, np.uint8))]
    scale = visualize.frame_scale(16)
    image = visualize.labelled_rows(rows, scale, wrap=10)
    assert scale == 4  # 16-px frames drawn at 64 px: legible at the MLflow UI's size
    assert image.shape == (3 * (64 + 2) - 2, visualize.LABEL_PX + 10 * (64 + 2) - 2)  # 12 frames: 10, then 2
    assert image[:64, :4].min() == 255 and image[:64, 4 : visualize.LABEL_PX].min() < 128  # a label is drawn
    assert (image[2 * 66 : 2 * 66 + 64, visualize.LABEL_PX : visualize.LABEL_PX + 64] == 255).all()  # truth frame


def test_a_clip_is_wrapped_near_square_so_mlflows_thumbnail_draws_its_frames_large():
    rows = [("#0 context", np.zeros((10, 64, 64), np.uint8)), ("truth", np.zeros((10, 64, 64), np.uint8)),
            ("prediction", np.zeros((10, 64, 64), np.uint8))]  # fmt: skip
    wrap = visualize.squarest_wrap([10, 10, 10], 64, 1)
    image = visualize.labelled_rows(rows, 1, wrap=wrap)
    assert wrap == 5 and image.shape == (6 * 66 - 2, visualize.LABEL_PX + 5 * 66 - 2)
    thumb = 64 * visualize.THUMBNAIL_PX / max(image.shape)
    unwrapped = 64 * visualize.THUMBNAIL_PX / (visualize.LABEL_PX + 10 * 66 - 2)
    assert thumb > 40 and thumb > 1.5 * unwrapped  # frames in the UI's thumbnail, px


def test_prediction_images_start_at_step_zero_on_a_fresh_run_only(tmp_path):
    import keras

    from nfp.training.callbacks import PredictionImages

    clips = np.zeros((2, 6, 16, 16, 1), np.uint8)
    steps = []
    model = keras.Sequential([keras.Input((None, 16, 16, 1)), keras.layers.Conv3D(1, 1)])
    for at_start in (True, False):
        images = PredictionImages(clips, every=1, context_frames=3, predict_frames=3, images_dir=str(tmp_path),
                                  sink=lambda image, key, step: steps.append((key, step)), at_start=at_start)  # fmt: skip
        images.set_model(model)
        images.on_train_begin()
    assert steps == [("predictions/clip_0", 0), ("predictions/clip_1", 0)]
