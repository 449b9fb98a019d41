"""bench/probe.py, the GPU probe, on this CPU: its data and Keras parts write scored JSON lines, one per milestone
under PROBE_MILESTONES, for an autoregressive and a direct (TAU) variant; its torch part, where PyTorch is missing,
says so in one line, and where PyTorch is installed (not in the project's venv) dry-runs the TAU peer."""

import json
import math
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
PROBE = REPO / "bench" / "probe.py"


def probe_env(tmp_path) -> dict:
    env = {**os.environ, "PROBE_SMALL": "1", "KERAS_BACKEND": "tensorflow", "TMPDIR": str(tmp_path)}  # clips there
    env["PROBE_VARIANTS"] = "tiny8=model.preset=tiny model.filters=[8,8]; tau=model.preset=tau_tiny"
    return env


NEW_FAMILIES = (
    "; pf=model.preset=predformer_tiny model.width=16 model.heads=2 model.blocks=1"
    "; pr=model.preset=predrnn_v2_tiny model.filters=[4,4]"
)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "probe.jsonl").read_text().splitlines() if line.strip()]


def run_part(part: str, out: Path, env: dict, timeout: int = 180):
    done = subprocess.run([sys.executable, str(PROBE), part, str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def assert_scored_at_milestones(first: dict, second: dict, slack: float = 0.6):
    """One run scored after 1 s and 2 s of training (PROBE_MILESTONES=1,2), scoring not counted as training: each
    line's train_s is its milestone, or past it by less than `slack` (the last step's overshoot)."""
    times = (first["train_s"], second["train_s"])
    assert 1 <= times[0] < 1 + slack and 2 <= times[1] < max(2, times[0]) + slack, times
    assert 0 < first["steps"] <= second["steps"]
    assert second["epochs_seen"] >= first["epochs_seen"] and first["compile_s"] == second["compile_s"]
    for r in (first, second):
        assert r["clips_per_s"] > 0 and r["train_gflop_per_clip"] > 0 and r["tflops"] > 0
        assert r["mfu"] is None  # no peak for a CPU
        assert all(math.isfinite(r[k]) for k in ("mse", "mae", "ssim", "final_loss", "clips_per_s"))


@pytest.mark.slow
def test_data_and_keras_parts_score_one_run_at_each_milestone(tmp_path):
    """An autoregressive variant (nfp's tiny ConvLSTM) and a direct one (tau_tiny: 10 frames in, 10 out, MSE plus
    TAU's differential divergence, OneCycle over the run's seconds), each trained once and scored at 1 s and 2 s."""
    out, env = tmp_path / "out", {**probe_env(tmp_path), "PROBE_MILESTONES": "1,2"}
    env["PROBE_VARIANTS"] += NEW_FAMILIES
    for part in ("data", "keras"):  # no budget_s: the last milestone ends the run
        run_part(part, out, env, timeout=300)
    lines = records(out)
    by_part = {r["part"]: r for r in lines}
    assert by_part["data"]["train"] == [64, 20, 32, 32] and by_part["data"]["test"] == [16, 20, 32, 32]
    assert math.isfinite(by_part["baselines"]["copy_last"]["mse"])
    header, *results = [r for r in lines if r["part"] == "keras"]
    assert header["backend"] == "tensorflow" and "devices" in header
    assert [r["model"] for r in results] == ["tiny8", "tiny8", "tau", "tau", "pf", "pf", "pr", "pr"]
    ar, direct, predformer, predrnn = results[:2], results[2:4], results[4:6], results[6:]
    assert all(r["loss"] == "mse" and r["kind"] == "autoregressive" and r["schedule"] == "constant" for r in ar)
    for r in direct:
        assert r["kind"] == "direct" and r["schedule"] == "onecycle" and r["lr"] == 3e-3  # tau_tiny's CPU recipe
        assert r["loss"] == "mse + 0.1 differential_divergence"
    assert_scored_at_milestones(*ar)
    assert_scored_at_milestones(*direct)
    # the new families with their papers' recipes: PredFormer AdamW (weight decay 1e-2), PredRNN-V2 its own loss
    assert all(r["kind"] == "direct" and r["optimizer"] == "adamw" and r["loss"] == "mse" for r in predformer)
    assert all(r["kind"] == "autoregressive" and r["loss"] == "mse + 0.1 decoupling" for r in predrnn)
    assert all(r["schedule"] == "onecycle" for r in predformer + predrnn)
    assert_scored_at_milestones(*predformer)
    assert_scored_at_milestones(*predrnn)


def test_one_cycle_over_seconds_is_nfps_onecycle_over_steps():
    """The probe's OneCycle at fraction f of the run is nfp.models.optim.OneCycle (PyTorch's OneCycleLR) at step
    f·(total − 1), for a run of many steps."""
    from nfp.models.optim import OneCycle

    one_cycle = runpy.run_path(str(PROBE), run_name="probe")["one_cycle"]
    total = 100_001
    nfp = OneCycle(1e-3, total_steps=total)
    for step in (0, 1_000, 29_999, 30_000, 30_001, 65_000, 99_000, 100_000, 120_000):
        expected = float(nfp(step))
        assert one_cycle(step / (total - 1), 1e-3) == pytest.approx(expected, rel=1e-3, abs=1e-12), step


@pytest.mark.parametrize("peer", ["convlstm", "tau"])
def test_torch_part_without_pytorch_says_so_in_one_line(tmp_path, peer):
    out = tmp_path / "out"
    code = textwrap.dedent(
        f"""
        import runpy, sys
        class NoTorch:  # this test must not depend on whether PyTorch is installed
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        sys.meta_path.insert(0, NoTorch())
        sys.argv = ["bench/probe.py", "torch", {str(out)!r}, "1"]
        runpy.run_path("bench/probe.py", run_name="__main__")
        """
    )
    env = {**probe_env(tmp_path), "PROBE_TORCH_MODEL": peer}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "probe torch: PyTorch is not installed here (ModuleNotFoundError: No module named 'torch'); the torch part needs it"
    ]
    assert done.stdout == "" and not (out / "probe.jsonl").exists()


def test_torch_part_names_the_peers_it_has(tmp_path):
    env = {**probe_env(tmp_path), "PROBE_TORCH_MODEL": "predrnn"}
    done = subprocess.run([sys.executable, str(PROBE), "torch", str(tmp_path / "out"), "1"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == "probe torch: PROBE_TORCH_MODEL: got 'predrnn', expected convlstm, tau, gsta"


@pytest.mark.slow
def test_torch_tau_peer_scores_one_run_at_each_milestone(tmp_path):
    """Where PyTorch is installed (the GPU machine, a scratch venv; not the project's venv): the TAU peer at
    tau_tiny's sizes, eager, scored at 1 s and 2 s, with nfp's FLOP count of the same architecture."""
    pytest.importorskip("torch")
    out = tmp_path / "out"
    env = {**probe_env(tmp_path), "PROBE_MILESTONES": "1,2", "PROBE_TORCH_MODEL": "tau", "PROBE_TORCH_COMPILE": "0"}
    for part in ("data", "torch"):
        run_part(part, out, env)
    header, *results = [r for r in records(out) if r["part"] == "torch"]
    assert header["peer"] == "openstl_tau" and header["modes"] == ["eager"]
    assert [(r["model"], r["mode"]) for r in results] == [("openstl_tau", "eager")] * 2
    for r in results:
        assert r["loss"] == "mse + 0.1 diff_div_reg" and r["schedule"] == "onecycle"
        assert r["params"] == 397_873  # tau_tiny's 398,769 less its BatchNorms' moving mean and variance
    assert_scored_at_milestones(*results, slack=3)  # a step of the peer on a busy 2-core CPU: up to seconds


@pytest.mark.parametrize(("peer", "preset"), [("tau", "tau_tiny"), ("gsta", "simvp_tiny")])
def test_torch_simvp_peer_is_nfps_model_with_the_same_weights(monkeypatch, peer, preset):
    """Where PyTorch is installed: the peer written out in the probe (OpenSTL's SimVP_Model) and nfp's model of the
    same preset, one set of weights copied across (BatchNorm statistics and layer scales moved off their init),
    give the same frames in inference, and the peer's TAU loss is nfp's MSE + 0.1 differential divergence."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from nfp.config import load_config
    from nfp.models import build_model, loss_term

    monkeypatch.setenv("PROBE_SMALL", "1")  # tau_tiny's sizes
    make_peer = runpy.run_path(str(PROBE), run_name="probe")["simvp_peer"]
    torch.manual_seed(0)
    functions = make_peer(torch, nn, "cpu", peer)
    theirs = functions["make"]().eval()
    with torch.no_grad():
        for m in theirs.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5)
        for name, p in theirs.named_parameters():
            if "layer_scale" in name:
                p.uniform_(0.5, 1.5)
    ours = build_model(
        load_config(None, [f"model.preset={preset}", "data.image_size=32"]).model, frame_shape=(32, 32, 1)
    )
    layer = {lay.name: lay for lay in ours.get_layer("core").layers}
    w = lambda t: t.detach().numpy()

    def conv(name, m, depthwise=False):
        layer[name].set_weights([w(m.weight).transpose((2, 3, 0, 1) if depthwise else (2, 3, 1, 0)), w(m.bias)])

    def norm(name, m):
        stats = [w(m.running_mean), w(m.running_var)] if isinstance(m, nn.BatchNorm2d) else []
        layer[name].set_weights([w(m.weight), w(m.bias), *stats])

    for i, block in enumerate(theirs.enc):
        conv(f"enc{i}_conv", block.conv), norm(f"enc{i}_norm", block.norm)
    for i, block in enumerate(theirs.dec):
        conv(f"dec{i}_conv", block.conv[0] if isinstance(block.conv, nn.Sequential) else block.conv)
        norm(f"dec{i}_norm", block.norm)
    conv("readout", theirs.readout)
    for i, meta in enumerate(theirs.hid):
        b, a, p = meta.block, meta.block.attn, f"mid{i}"
        norm(f"{p}_norm_attn", b.norm1), norm(f"{p}_norm_mlp", b.norm2)
        conv(f"{p}_attn_proj1", a.proj_1), conv(f"{p}_attn_conv1", a.conv1), conv(f"{p}_attn_proj2", a.proj_2)
        conv(f"{p}_attn_conv0", a.conv0, True), conv(f"{p}_attn_conv_spatial", a.conv_spatial, True)
        if peer == "tau":
            layer[f"{p}_attn_fc1"].set_weights([w(a.fc[0].weight).T])
            layer[f"{p}_attn_fc2"].set_weights([w(a.fc[2].weight).T])
        conv(f"{p}_mlp_fc1", b.mlp.fc1), conv(f"{p}_mlp_dw", b.mlp.dwconv, True), conv(f"{p}_mlp_fc2", b.mlp.fc2)
        layer[f"{p}_scale_attn"].set_weights([w(b.layer_scale_1)])
        layer[f"{p}_scale_mlp"].set_weights([w(b.layer_scale_2)])
        if isinstance(meta.reduction, nn.Conv2d):
            conv(f"{p}_reduction", meta.reduction)
    rng = np.random.default_rng(0)
    x, truth = rng.random((2, 2, 10, 32, 32, 1), dtype=np.float32)
    to_torch = lambda a: torch.from_numpy(a).permute(0, 1, 4, 2, 3)  # (B, T, C, H, W)
    with torch.no_grad():
        expected = theirs(to_torch(x)).permute(0, 1, 3, 4, 2).numpy()
    np.testing.assert_allclose(np.asarray(ours(x, training=False)), expected, atol=1e-4)
    loss = float(functions["loss"](to_torch(expected), to_torch(truth)))
    nfp_loss = np.mean((expected - truth) ** 2)
    if peer == "tau":
        nfp_loss += 0.1 * np.mean(np.asarray(loss_term("differential_divergence")(truth, expected)))
    assert loss == pytest.approx(float(nfp_loss), rel=1e-5)
