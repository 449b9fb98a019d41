"""Config: files load, overrides apply, every kind of bad value is one line naming its key path."""

import pytest

from nfp.config import Config, load_config
from nfp.errors import ConfigError


def test_shipped_configs_load():
    for name in ("quickstart", "multi_gpu", "multi_node"):
        cfg = load_config(f"configs/{name}.yaml")
        assert isinstance(cfg, Config)


def test_overrides_apply_with_yaml_types():
    cfg = load_config(None, ["train.epochs=3", "model.filters=[4, 4]", "data.stage=true", "tracking.run_name=abc"])
    assert cfg.train.epochs == 3
    assert cfg.model.filters == [4, 4]
    assert cfg.data.stage is True
    assert cfg.tracking.run_name == "abc"


def test_a_preset_fills_the_model_keys_the_config_leaves_unset():
    s = load_config(None, ["model.preset=convlstm_s"]).model
    assert (s.cell, s.filters, s.kernel_sizes, s.patch_size, s.output_activation) == (
        "nfp",
        [128] * 4,
        [5] * 4,
        4,
        "linear",
    )
    keras_io = load_config(None, ["model.preset=keras_io"]).model
    assert (keras_io.cell, keras_io.filters, keras_io.norm, keras_io.activation) == (
        "keras",
        [64, 64, 64],
        "batch",
        "relu",
    )
    narrower = load_config(
        None, ["model.preset=convlstm_s", "model.filters=[32, 32]", "model.kernel_sizes=[3, 3]"]
    ).model
    assert (narrower.filters, narrower.patch_size) == ([32, 32], 4)  # keys you set win, the rest come from the preset


def test_shipped_configs_train_what_their_comments_say():
    quickstart = load_config("configs/quickstart.yaml")
    assert (quickstart.model.preset, quickstart.distribute.strategy, quickstart.data.source) == (
        "tiny",
        "auto",
        "generate",
    )
    for name, strategy in (("multi_gpu", "mirrored"), ("multi_node", "multi_worker")):
        cfg = load_config(f"configs/{name}.yaml")
        assert cfg.distribute.strategy == strategy and cfg.data.source == "download"
        assert (cfg.train.mixed_precision, cfg.train.jit_compile) == ("auto", "auto")  # the devices decide
        assert cfg.model.preset == "convlstm_s" and cfg.train.loss == "mse" and cfg.train.scheduled_sampling > 0
        assert cfg.data.image_size == 64 and cfg.train.epochs >= 50


def test_loss_auto_follows_the_output_head():
    assert load_config(None, ["model.preset=keras_io"]).train.loss == "bce"  # sigmoid head: probabilities
    assert load_config(None, ["model.preset=convlstm_s"]).train.loss == "mse"  # linear head
    assert load_config(None, []).train.loss == "mse"  # tiny
    assert load_config(None, ["model.preset=convlstm_s", "train.loss=mse"]).train.loss == "mse"
    assert load_config(None, ["train.loss=mse"]).train.loss == "mse"


def test_on_off_switches_survive_yaml_booleans():
    assert load_config(None, ["train.jit_compile=on"]).train.jit_compile == "on"
    assert load_config(None, ["train.jit_compile=off"]).train.jit_compile == "off"


def test_scientific_notation_is_a_number():
    assert load_config(None, ["train.learning_rate=1e-3"]).train.learning_rate == 0.001


def test_overrides_as_one_string_like_mlproject_passes_them():
    cfg = load_config(None, "train.epochs=4 train.batch_size=2")
    assert (cfg.train.epochs, cfg.train.batch_size) == (4, 2)


def test_flat_params_use_dotted_key_paths():
    flat = load_config(None, ["train.epochs=5"]).flat()
    assert flat["train.epochs"] == 5
    assert flat["train.schedule.name"] == "constant"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.epochs=x", "train.epochs: got 'x', expected an integer"),
        ("train.bogus=1", "train.bogus: unknown key"),
        ("bogus.key=1", "bogus: unknown key"),
        ("train.batch_size=0", "train.batch_size: got 0, expected >= 1"),
        (
            "model.preset=huge",
            "model.preset: got 'huge', expected one of tiny, keras_io, convlstm_s, simvp_gsta, tau, simvp_tiny, tau_tiny, "
            "predformer, predformer_tiny, predrnn_v2, predrnn_v2_tiny, custom",
        ),
        ("data.stage=maybe", "data.stage: got 'maybe', expected true or false"),
        ("data.split.train=0.5", "data.split: fractions sum to 0.7"),
        ("model.dropout=1.5", "model.dropout: got 1.5, expected <= 0.99"),
        ("train.epochs", "override 'train.epochs': expected key.path=value"),
        ("train=3", "train: expected a mapping"),
    ],
)
def test_bad_value_is_one_line_naming_the_key(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_contradictory_context_length_is_refused():
    with pytest.raises(ConfigError, match=r"evaluate.context_frames: got 20, expected < data.frames \(20\)"):
        load_config(None, ["evaluate.context_frames=20"])


def test_empty_and_non_yaml_files(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(empty)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_frame_size_wins_over_image_size_and_an_override_it_would_hide_is_refused(tmp_path):
    square = tmp_path / "square.yaml"
    square.write_text("data: {image_size: 32, digit_size: 8}\n")
    assert load_config(square, ["data.frame_size=[32,24]"]).data.frame_hw == (32, 24)  # the override is meant to win
    assert load_config(None, ["data.image_size=16", "data.frame_size=[16,24]", "data.digit_size=8"]).data.frame_hw == (
        16,
        24,
    )
    wide = tmp_path / "wide.yaml"
    wide.write_text("data: {frame_size: [32, 24], digit_size: 8}\n")
    with pytest.raises(ConfigError, match=r"^data.frame_size and data.image_size: both set \(\[32, 24\] and 16\)"):
        load_config(wide, ["data.image_size=16"])  # would be ignored: refused
