"""The package layout follows the data flow: no module reaches up or sideways into a later stage."""

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

NFP = Path(__file__).resolve().parents[1] / "nfp"


def _imports(path: Path) -> set[str]:
    """Every nfp module a file imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nfp"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("nfp"))
    return found


@pytest.mark.parametrize("path", sorted((NFP / "data").glob("*.py")), ids=lambda p: p.name)
def test_data_modules_do_not_depend_on_tracking_or_later_stages(path):
    later = ("nfp.tracking", "nfp.train", "nfp.callbacks", "nfp.evaluate", "nfp.predict", "nfp.models")
    assert not {m for m in _imports(path) if m.startswith(later)}


def test_the_reader_does_not_import_the_writer():
    assert not {m for m in _imports(NFP / "data" / "pipeline.py") if m.startswith("nfp.data.prepare")}
    assert not {m for m in _imports(NFP / "data" / "shards.py") if m.startswith("nfp.data.prepare")}


def test_model_code_imports_without_tensorflow():
    """The GPU probe runs nfp's model under Keras 3 on JAX, on a machine that has no TensorFlow; prepare's decoding
    processes import nfp.data.files and what it uses, and stay small without it."""
    code = textwrap.dedent(
        """
        import sys
        class NoTensorFlow:
            def find_spec(self, name, path=None, target=None):
                if name == "tensorflow" or name.startswith("tensorflow."):
                    raise ImportError("TensorFlow is not installed here")
        sys.meta_path.insert(0, NoTensorFlow())
        import nfp.config, nfp.models, nfp.data.moving_mnist, nfp.data.files, nfp.data.images, nfp.data.demo
        for preset in ("tau_tiny", "tiny"):  # the doctor's and the probe's FLOP count: no model built, no Keras
            cfg = nfp.config.load_config(None, [f"model.preset={preset}"])
            nfp.models.flops_per_clip(cfg.model, frame_shape=(16, 16, 1), input_frames=10, output_frames=10)
        assert "keras" not in sys.modules
        assert "tensorflow" not in sys.modules
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={"KERAS_BACKEND": "numpy"}
    )
    assert done.returncode == 0, done.stderr[-2000:]


# --------------------------------------------------------------------------- the family seam
FAMILY_INTERNALS = ("convlstm", "simvp", "traced")  # nfp.models' sub-modules: a family's own, or the seam's helper
OUTSIDE_MODELS = sorted(p for p in NFP.rglob("*.py") if "models" not in p.relative_to(NFP).parts) + sorted(
    (NFP.parent / "bench").glob("*.py")
)


def _reaches_into_a_family(path: Path) -> set[str]:
    """The nfp.models sub-modules a file imports (`nfp.models.simvp…`, `from nfp.models import convlstm`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("nfp.models."):
                found.add(node.module)
            elif node.module == "nfp.models":
                found.update(f"nfp.models.{a.name}" for a in node.names if a.name in FAMILY_INTERNALS)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("nfp.models."))
    return found


@pytest.mark.parametrize("path", OUTSIDE_MODELS, ids=lambda p: str(p.relative_to(NFP.parent)))
def test_nothing_outside_nfp_models_imports_a_familys_internals(path):
    """train, devices, scoring, serving, callbacks, doctor, evaluate, predict and bench/ reach a family through the
    seam's functions (nfp.models) only."""
    assert not _reaches_into_a_family(path)


def test_the_seam_check_catches_a_reach_into_a_family(tmp_path):
    """The check above is not vacuous: each way of reaching in is caught."""
    for line in (
        "from nfp.models.simvp.layers import build_model",
        "from nfp.models import simvp",
        "import nfp.models.convlstm.layers",
    ):
        (tmp_path / "x.py").write_text(line + "\n")
        assert _reaches_into_a_family(tmp_path / "x.py"), line
    (tmp_path / "x.py").write_text("from nfp.models import build_model, rollout\n")
    assert not _reaches_into_a_family(tmp_path / "x.py")


@pytest.mark.parametrize("path", sorted((NFP / "models").rglob("*.py")), ids=lambda p: str(p.relative_to(NFP)))
def test_model_code_imports_nothing_from_training_tracking_or_data(path):
    assert {m for m in _imports(path) if not m.startswith(("nfp.models", "nfp.errors"))} == set()


@pytest.mark.parametrize(
    "module", ["train", "devices", "scoring", "serving", "callbacks", "doctor", "evaluate", "predict"]
)
def test_the_stages_name_no_family(module):
    """No family's name in code outside nfp/models/ (a family is chosen by config, found from the model)."""
    source = (NFP / f"{module}.py").read_text()
    assert not re.search(r"[\"']\s*(convlstm|simvp)\s*[\"']|ConvLSTMStack|SimVP", source)
