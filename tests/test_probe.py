"""bench/probe.py, the GPU probe, on this CPU: its data and Keras parts write scored JSON lines, one per milestone
under PROBE_MILESTONES; its torch part, where PyTorch is missing, says so in one line."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROBE = REPO / "bench" / "probe.py"


def probe_env(tmp_path) -> dict:
    env = {**os.environ, "PROBE_SMALL": "1", "KERAS_BACKEND": "tensorflow", "TMPDIR": str(tmp_path)}  # clips there
    env["PROBE_VARIANTS"] = "tiny8=model.preset=tiny model.filters=[8,8]"
    return env


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "probe.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_data_and_keras_parts_score_one_run_at_each_milestone(tmp_path):
    """PROBE_MILESTONES=1,2: one run, scored after 1 s and after 2 s of training, the scoring not counted as training."""
    out, env = tmp_path / "out", {**probe_env(tmp_path), "PROBE_MILESTONES": "1,2"}
    for part in ("data", "keras"):  # no budget_s: the last milestone ends the run
        done = subprocess.run([sys.executable, str(PROBE), part, str(out)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
    lines = records(out)
    by_part = {r["part"]: r for r in lines}
    assert by_part["data"]["train"] == [64, 20, 32, 32] and by_part["data"]["test"] == [16, 20, 32, 32]
    assert math.isfinite(by_part["baselines"]["copy_last"]["mse"])
    header, first, second = [r for r in lines if r["part"] == "keras"]
    assert header["backend"] == "tensorflow" and "devices" in header
    assert first["model"] == second["model"] == "tiny8" and first["loss"] == "mse"
    assert 1 <= first["train_s"] < 1.6 and 2 <= second["train_s"] < 2.6, (first["train_s"], second["train_s"])
    assert 0 < first["steps"] <= second["steps"]
    assert second["epochs_seen"] >= first["epochs_seen"] and first["compile_s"] == second["compile_s"]
    for r in (first, second):
        assert r["clips_per_s"] > 0
        assert all(math.isfinite(r[k]) for k in ("mse", "mae", "ssim", "final_loss", "clips_per_s"))


def test_torch_part_without_pytorch_says_so_in_one_line(tmp_path):
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
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=probe_env(tmp_path), capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "probe torch: PyTorch is not installed here (ModuleNotFoundError: No module named 'torch'); the torch part needs it"
    ]
    assert done.stdout == "" and not (out / "probe.jsonl").exists()
