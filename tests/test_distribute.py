"""Strategy choice, cluster roles, and MirroredStrategy on two logical CPUs matching one device."""

import json
import textwrap

import pytest
import warm

from nfp.config import load_config
from nfp.distribute import cluster_info, make_strategy
from nfp.errors import ConfigError, TrainingError


def _dist(*overrides):
    return load_config(None, list(overrides)).distribute


def _tf_config(monkeypatch, n, index, chief=False):
    cluster = {"worker": [f"127.0.0.1:{20000 + i}" for i in range(n)]}
    task = {"type": "worker", "index": index}
    if chief:
        cluster["chief"] = ["127.0.0.1:19999"]
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))


def test_auto_on_a_cpu_machine_is_the_default_strategy():
    import tensorflow as tf

    strategy = make_strategy(_dist("distribute.strategy=auto"))
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1


def test_auto_with_several_tasks_in_tf_config_is_multi_worker(monkeypatch):
    import tensorflow as tf

    from nfp.distribute import multiworker

    made, patched = [], []

    class FakeMultiWorker:
        num_replicas_in_sync = 2

        def __init__(self):
            made.append(self)

    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", FakeMultiWorker)
    monkeypatch.setattr(multiworker, "apply", patched.append)
    _tf_config(monkeypatch, 2, 0)
    strategy = make_strategy(_dist("distribute.strategy=auto"))
    assert made == [strategy] and patched == [strategy]  # the Keras workaround goes with it
    assert strategy.num_replicas_in_sync == 2


def test_multiworker_workaround_only_patches_for_multi_worker_strategies():
    import tensorflow as tf

    from nfp.distribute import multiworker

    assert multiworker.apply(tf.distribute.get_strategy()) is False


def test_cluster_info_worker_zero_is_chief_unless_a_chief_task_exists(monkeypatch):
    assert cluster_info() == cluster_info().__class__(is_chief=True, task_index=0, num_workers=1)
    _tf_config(monkeypatch, 3, 0)
    assert (cluster_info().is_chief, cluster_info().num_workers) == (True, 3)
    _tf_config(monkeypatch, 3, 2)
    assert (cluster_info().is_chief, cluster_info().task_index) == (False, 2)
    _tf_config(monkeypatch, 2, 0, chief=True)  # Vertex AI: a "chief" task, workers are not chiefs
    assert (cluster_info().is_chief, cluster_info().num_workers) == (False, 3)


@pytest.mark.parametrize(
    "ips", ["10.0.0.1,10.0.0.2,10.0.0.3", "10.0.0.1 10.0.0.2\t10.0.0.3", "10.0.0.1,\n10.0.0.2\n\n10.0.0.3,"]
)
def test_cluster_info_sees_every_node_of_a_comma_or_space_separated_skypilot_list(monkeypatch, ips):
    monkeypatch.setenv("TF_CONFIG", "")  # unset for nfp; monkeypatch removes what ensure_tf_config writes
    monkeypatch.setenv("SKYPILOT_NODE_IPS", ips)
    monkeypatch.setenv("SKYPILOT_NODE_RANK", "1")
    assert cluster_info() == cluster_info().__class__(is_chief=False, task_index=1, num_workers=3)


@pytest.mark.parametrize("ips", ["10.0.0.1;10.0.0.2", "10.0.0.1|10.0.0.2"])
def test_cluster_info_refuses_a_skypilot_list_it_cannot_split_instead_of_training_alone(monkeypatch, ips):
    monkeypatch.setenv("TF_CONFIG", "")
    monkeypatch.setenv("SKYPILOT_NODE_IPS", ips)
    monkeypatch.setenv("SKYPILOT_NODE_RANK", "0")
    with pytest.raises(ConfigError, match="^SKYPILOT_NODE_IPS: .* is not an IP address or hostname"):
        cluster_info()


def test_unknown_mirrored_device_names_its_config_key():
    with pytest.raises(ConfigError, match=r"distribute.devices\[1\]: got '/gpu:7'"):
        make_strategy(_dist("distribute.strategy=mirrored", "distribute.devices=['/cpu:0', '/gpu:7']"))


_MIRRORED = textwrap.dedent(
    """
    import json, numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from nfp.config import load_config
    from nfp.distribute import make_strategy, strategy_name
    from nfp.models.convlstm.model import build_model

    x = np.random.default_rng(0).random((16, 5, 16, 16, 1), dtype=np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x[:, :-1], x[:, 1:])).batch(8)
    models = {
        "keras": ["model.cell=keras", "model.norm=layer"],
        "nfp": ["model.patch_size=2"],
        "nfp_sampling": ["model.patch_size=2", "train.scheduled_sampling=4"],
    }
    out = {}
    for name, devices in (("default", "[]"), ("mirrored", "['/cpu:0', '/cpu:1']")):
        # one strategy for every model: a second MirroredStrategy in a process collides with the first's collectives
        strategy = None
        for model_name, model_overrides in models.items():
            cfg = load_config(None, [f"distribute.strategy={name}", f"distribute.devices={devices}", "model.preset=custom",
                                     "model.filters=[4]", "model.kernel_sizes=[3]", "data.image_size=16",
                                     "data.digit_size=8", "data.frames=5", "evaluate.context_frames=2",
                                     "evaluate.predict_frames=2", *model_overrides])
            strategy = strategy or make_strategy(cfg.distribute)
            keras.utils.set_random_seed(0)
            with strategy.scope():
                model = build_model(cfg.model, image_size=16, scheduled_sampling=cfg.train.scheduled_sampling,
                                    context_frames=cfg.evaluate.context_frames)
                model.compile(keras.optimizers.SGD(0.05), "bce")
            loss = model.fit(ds, epochs=3, verbose=0).history["loss"]
            steps = [int(w.numpy()) for w in model.non_trainable_weights if "sampling_step" in w.path]
            out[f"{model_name}/{name}"] = {"replicas": strategy.num_replicas_in_sync, "name": strategy_name(strategy),
                                           "loss": loss, "steps": steps}
    print(json.dumps(out))
    """
)


def test_mirrored_on_two_logical_cpus_matches_one_device():
    proc = warm.run(["-c", _MIRRORED], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for cell in ("keras", "nfp"):
        one, two = out[f"{cell}/default"], out[f"{cell}/mirrored"]
        assert two["replicas"] == 2 and one["replicas"] == 1
        assert (two["name"], one["name"]) == ("MirroredStrategy", "DefaultStrategy")
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-4), cell
        assert one["loss"][-1] < one["loss"][0], cell  # it trained
    # scheduled sampling draws per replica, so the losses differ; every replica counts each step once
    assert out["nfp_sampling/mirrored"]["steps"] == out["nfp_sampling/default"]["steps"] == [6]
    assert out["nfp_sampling/mirrored"]["loss"][-1] < out["nfp_sampling/mirrored"]["loss"][0]


def _fake_multi_worker(monkeypatch):
    """A MultiWorkerMirroredStrategy stand-in, with Keras's trainer restored after the test."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    from nfp.distribute import multiworker

    class FakeMultiWorker:
        pass

    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", FakeMultiWorker)
    monkeypatch.setattr(multiworker, "_applied", False)
    monkeypatch.setattr(
        tf_trainer.TensorFlowTrainer, "_maybe_symbolic_build", tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    )
    monkeypatch.setattr(tf_trainer, "reduce_per_replica", tf_trainer.reduce_per_replica)
    return multiworker, tf_trainer, FakeMultiWorker()


def test_multiworker_workaround_warns_loudly_on_untested_keras(monkeypatch):
    import keras

    multiworker, tf_trainer, strategy = _fake_multi_worker(monkeypatch)
    original = tf_trainer.reduce_per_replica
    monkeypatch.setattr(keras, "__version__", "3.99.0")
    with pytest.warns(RuntimeWarning, match=r"keras 3\.99\.0 is untested .*keras-team/keras/issues/20585"):
        assert multiworker.apply(strategy) is True
    assert tf_trainer.reduce_per_replica is not original


def test_multiworker_workaround_refuses_when_keras_internals_changed(monkeypatch):
    multiworker, tf_trainer, strategy = _fake_multi_worker(monkeypatch)
    monkeypatch.delattr(tf_trainer, "reduce_per_replica")
    with pytest.raises(TrainingError, match="trainer internals changed .*reduce_per_replica"):
        multiworker.apply(strategy)
