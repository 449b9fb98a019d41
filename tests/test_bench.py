"""`python -m bench --quick` runs every benchmark and writes a well-formed section; the FLOPs formula and --only merge hold.

Benchmarks are never timed here: --quick uses tiny sizes, and no figure is asserted.
"""

import re
import sys
from pathlib import Path

import pytest
import warm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # bench/ is a repo-root package, not installed with nfp; plain `pytest` must find it too

from bench.__main__ import MODULES  # noqa: E402
from bench.common import merge, sections_of  # noqa: E402


def each_benchmark(*names):
    """Parameters for `quick_report`: one `--quick --only NAME` run each, its tests kept on one xdist worker (the run
    is built once there) while the runs share the workers out."""
    return pytest.mark.parametrize(
        "quick_report",
        [pytest.param(name, marks=pytest.mark.xdist_group(f"bench-{name}")) for name in names or MODULES],
        indirect=True,
    )


@pytest.fixture(scope="module")
def quick_report(request, tmp_path_factory) -> str:
    """The report of one `python -m bench --quick --only NAME` run (tiny sizes, scratch dirs): its header and NAME's
    section."""
    from conftest import empty_mlflow_store

    tmp = tmp_path_factory.mktemp(f"bench-{request.param}")
    out = tmp / "BENCHMARKS.md"
    empty_mlflow_store(tmp / "work/mlflow.db")  # the store bench tracks into, its tables made
    argv = ["-m", "bench", "--quick", "--only", request.param, "--out", str(out), "--workdir", str(tmp / "work")]
    proc = warm.run(argv, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out.read_text()


@pytest.mark.slow
@each_benchmark()
def test_quick_run_writes_header_with_machine_and_versions(quick_report):
    head = quick_report.split("<!-- bench:", 1)[0]
    assert re.search(r"\*\*Machine\*\*: .+, \d+ cores usable", head)
    assert re.search(r"\*\*Versions\*\*: python [\d.]+, tensorflow [\d.]+, keras [\d.]+, mlflow [\d.]+", head)
    assert re.search(r"on \d{4}-\d\d-\d\d \d\d:\d\d UTC", head)


@pytest.mark.slow
@each_benchmark()
def test_quick_run_writes_each_benchmark_section(quick_report, request):
    name = request.node.callspec.params["quick_report"]
    section = sections_of(quick_report)[name]
    assert "**Did not run**" not in section
    assert re.search(r"^## \d+\. ", section, re.M)
    assert re.search(r"^\| .+ \|\n\|(---\|)+\n\| ", section, re.M), "a markdown table with at least one row"
    # every benchmark reports at least one ratio with its absolute values
    assert re.search(r"^- .+: \*\*([-\d.e+]+|nan)×\*\* \(.+ / .+\); target ", section, re.M)
    assert re.search(r"_Ran in \d+ s on ", section)


def test_only_replaces_one_section_and_keeps_the_others():
    old = (
        "# header\n\n<!-- bench:pipeline -->\nold pipeline\n<!-- /bench:pipeline -->\n\n"
        "<!-- bench:quality -->\nq\n<!-- /bench:quality -->\n"
    )
    new = {"pipeline": "<!-- bench:pipeline -->\nnew pipeline\n<!-- /bench:pipeline -->"}
    merged = merge(old, new, MODULES)
    assert list(merged) == ["pipeline", "quality"]
    assert "new pipeline" in merged["pipeline"] and "old" not in merged["pipeline"]
    assert "\nq\n" in merged["quality"]


def test_only_keeps_the_header_and_hand_written_text_around_the_sections():
    """`--only NAME` into an existing file replaces that section alone: the machine line of the header and a section
    written by hand between markers' sections (BENCHMARKS 5b) stay; a new section goes where MODULES puts it."""
    from bench.common import replace_sections

    old = (
        "# header\nmachine: the one of the full run\n\n<!-- bench:pipeline -->\nold pipeline\n<!-- /bench:pipeline -->\n\n"
        "## 5b. by hand\nkept\n\n<!-- bench:quality -->\nq\n<!-- /bench:quality -->\n"
    )
    new = {
        "pipeline": "<!-- bench:pipeline -->\nnew pipeline\n<!-- /bench:pipeline -->",
        "training": "<!-- bench:training -->\nt\n<!-- /bench:training -->",
        "sweep": "<!-- bench:sweep -->\ns\n<!-- /bench:sweep -->",
    }
    text = replace_sections(old, new, MODULES)
    assert text.startswith("# header\nmachine: the one of the full run\n\n<!-- bench:pipeline -->\nnew pipeline\n")
    assert "old pipeline" not in text and "## 5b. by hand\nkept\n" in text
    assert list(sections_of(text)) == ["pipeline", "training", "quality", "sweep"]


@pytest.mark.parametrize("preset", ["tiny", "keras_io", "convlstm_s"])
def test_flops_formula_implies_the_keras_parameter_count(preset):
    from bench.common import nfp_config
    from nfp.models.convlstm.model import build_model, flops_per_clip

    cfg = nfp_config([f"model.preset={preset}"]).model
    counted = flops_per_clip(cfg, image_size=16, frames=1)
    assert counted["params"] == build_model(cfg, image_size=16).count_params()
    assert counted["params"] == flops_per_clip(cfg, image_size=64, frames=1)["params"]  # convolutions: size-free
    assert flops_per_clip(cfg, image_size=16, frames=19)["forward"] == 19 * counted["forward"]
    assert counted["train"] == 3 * counted["forward"]


@pytest.mark.slow
@each_benchmark("pipeline")
def test_pipeline_section_isolates_the_cost_of_reading_records(quick_report):
    section = sections_of(quick_report)["pipeline"]
    for row in (
        "TFRecord reads → batch → uint8 clips only",
        "in-memory uint8 clips → batch only",
        "TFRecords, plain, `data.cache: true`",
    ):
        assert re.search(rf"^\| {re.escape(row)}.* \| [\d,.]+ \| [\d.]+ \|", section, re.M), (
            row
        )  # CPU µs/clip, cores busy
    assert re.search(
        r"Reading and decoding them alone costs [\d,.]+ CPU µs/clip more .* at ≈ [\d.]+× \(an estimate", section
    )
    assert re.search(
        r"Ratio within each round .*: TFRecords, plain [\d.]+, [\d.]+ \(median [\d.]+×\); TFRecords, GZIP ", section
    )


def test_gpu_probe_renders_each_familys_check_against_its_peer(tmp_path, monkeypatch):
    """A recorded probe file with PredRNN-V2's and PredFormer's lines beside their PyTorch peers' (eager and compiled)
    renders one ≤ 0.8× check per pair and milestone, passing or failing by the MSEs."""
    import json

    import bench.gpu_probe as gpu_probe

    def line(part, model, seconds, mse, mode=None):
        return {"part": part, "model": model, "policy": "bf16", "params": 1, "train_s": seconds, "steps": 10,
                "clips_per_s": 100.0, "mse": mse, "mae": 1.0, "ssim": 0.5, **({"mode": mode} if mode else {})}  # fmt: skip

    records = [
        {
            "part": "session",
            "card": "NVIDIA H100",
            "date": "2026-12-07",
            "keras": "3.15.1",
            "jax": "0.10",
            "torch": "2.15",
            "probe": "bench/probe.py",
        },
        {
            "part": "baselines",
            "copy_last": {"mse": 90.0, "mae": 1, "ssim": 0.1},
            "mean_frame": {"mse": 80.0, "mae": 1, "ssim": 0.1},
        },
        line("keras", "predrnn_v2", 40, 30.0),
        line("torch", "openstl_predrnn_v2", 40, 50.0, "eager"),
        line("torch", "openstl_predrnn_v2", 40, 35.0, "compile"),
        line("keras", "predformer", 40, 20.0),
        line("torch", "predformer_quadruplet_tsst", 40, 30.0, "eager"),
    ]
    results = tmp_path / "probe.jsonl"
    results.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    monkeypatch.setattr(gpu_probe, "RESULTS", results)
    monkeypatch.setattr(gpu_probe, "REPO", tmp_path)
    checks = {c.label: c for c in gpu_probe.run(False, tmp_path).checks}
    assert set(checks) == {
        "nfp `predrnn_v2` MSE / OpenSTL PredRNN-V2 (eager) MSE after 40 s, same session",
        "nfp `predrnn_v2` MSE / OpenSTL PredRNN-V2 (compile) MSE after 40 s, same session",
        "nfp `predformer` MSE / PredFormer Quadruplet-TSST (eager) MSE after 40 s, same session",
    }
    passed = {label.split(" MSE after")[0]: (round(c.value, 3), c.passed) for label, c in checks.items()}
    assert passed["nfp `predrnn_v2` MSE / OpenSTL PredRNN-V2 (eager)"] == (0.6, True)
    assert passed["nfp `predrnn_v2` MSE / OpenSTL PredRNN-V2 (compile)"] == (0.857, False)
    assert passed["nfp `predformer` MSE / PredFormer Quadruplet-TSST (eager)"] == (0.667, True)
