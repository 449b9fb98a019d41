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


# The stages, lowest first: a module imports only its own stage, the stages before it, and the bottom layer. config
# reads the families' registry (their keys and presets), so nfp.models, which imports nothing but nfp.errors, comes
# before it; data and models do not import each other.
STAGES = (
    ("bottom", ("nfp.errors", "nfp.storage", "nfp.rundir", "nfp.visualize")),
    ("models", ("nfp.models",)),
    ("config", ("nfp.config",)),
    ("data", ("nfp.data",)),
    ("distribute", ("nfp.distribute",)),
    ("tracking", ("nfp.tracking",)),
    ("inference", ("nfp.inference",)),
    ("sweep", ("nfp.sweep",)),  # a trial trains in a process of its own: training imports only its pruning callback
    ("training", ("nfp.training",)),
    ("front door", ("nfp.cli", "nfp.doctor", "nfp.__main__", "nfp")),
)
MODULES = sorted(NFP.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(NFP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _rank(module: str) -> int:
    """The stage of `module` (a module or a name imported from one): the longest prefix that names a stage."""
    best = None
    for rank, (_, prefixes) in enumerate(STAGES):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (rank, len(prefix))
    assert best is not None, f"{module}: in no stage of tests/test_layout.py's STAGES"
    return best[0]


def _upward(path: Path) -> set[str]:
    mine = _rank(_module_name(path))
    return {m for m in _imports(path) if m != "nfp" and _rank(m) > mine}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(NFP)))
def test_a_stage_imports_only_earlier_stages_and_the_bottom_layer(path):
    assert not _upward(path), f"{_module_name(path)} ({STAGES[_rank(_module_name(path))][0]}) imports a later stage"


def test_the_stage_check_catches_a_lower_stage_importing_a_higher_one(tmp_path):
    """The check above is not vacuous: data reaching into training, tracking into inference, are caught."""
    for folder, line in (
        ("data", "from nfp.training.train import train"),
        ("tracking", "from nfp.inference import serving"),
        ("models", "import nfp.config"),
    ):
        fake = NFP / folder / "_layout_probe.py"
        try:
            fake.write_text(line + "\n")
            assert _upward(fake), line
        finally:
            fake.unlink()


def _module_graph() -> dict[str, set[str]]:
    """Module → the nfp modules it imports (a name imported from a package counts as its module where it is one)."""
    names = {_module_name(p) for p in MODULES}
    graph = {}
    for path in MODULES:
        edges = set()
        for m in _imports(path):
            while m not in names and "." in m:
                m = m.rsplit(".", 1)[0]
            if m in names and m != _module_name(path):
                edges.add(m)
        graph[_module_name(path)] = edges
    return graph


def test_no_module_imports_in_a_circle():
    graph, circles = _module_graph(), []

    def visit(node, trail):
        for nxt in graph[node]:
            if nxt in trail:
                circles.append(trail[trail.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, [*trail, nxt])
        done.add(node)

    done: set[str] = set()
    for start in graph:
        if start not in done:
            visit(start, [start])
    # a package's face importing its own modules is not a circle of design: only circles between two real modules
    real = [c for c in circles if not any(c[i + 1].startswith(c[i] + ".") for i in range(len(c) - 1))]
    assert not real, " ; ".join(" → ".join(c) for c in real)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(NFP)))
def test_no_module_is_over_500_lines(path):
    assert len(path.read_text().splitlines()) <= 500


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
# nfp.models' sub-modules that are a family's own, or the seam's helper; nfp.models.optim (what a compiled model holds
# besides its layers: loss, optimizer, LR schedule) is for every stage
FAMILY_INTERNALS = ("convlstm", "simvp", "traced")
OUTSIDE_MODELS = sorted(p for p in NFP.rglob("*.py") if "models" not in p.relative_to(NFP).parts) + sorted(
    (NFP.parent / "bench").glob("*.py")
)


def _reaches_into_a_family(path: Path) -> set[str]:
    """The nfp.models sub-modules a file imports (`nfp.models.simvp…`, `from nfp.models import convlstm`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("nfp.models.") and node.module.split(".")[2] in FAMILY_INTERNALS:
                found.add(node.module)
            elif node.module == "nfp.models":
                found.update(f"nfp.models.{a.name}" for a in node.names if a.name in FAMILY_INTERNALS)
        elif isinstance(node, ast.Import):
            found.update(
                a.name
                for a in node.names
                if a.name.startswith("nfp.models.") and a.name.split(".")[2] in FAMILY_INTERNALS
            )
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


STAGE_CODE = sorted(
    p
    for p in MODULES
    if p.relative_to(NFP).parts[0] in ("training", "inference", "tracking", "distribute", "doctor.py")
)


@pytest.mark.parametrize("path", STAGE_CODE, ids=lambda p: str(p.relative_to(NFP)))
def test_the_stages_name_no_family(path):
    """No family's name in code outside nfp/models/ (a family is chosen by config, found from the model)."""
    assert not re.search(r"[\"']\s*(convlstm|simvp)\s*[\"']|ConvLSTMStack|SimVP", path.read_text())
