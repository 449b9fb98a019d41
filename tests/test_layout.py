"""The package layout follows the data flow: no module reaches up or sideways into a later stage."""

import ast
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
    later = ("nfp.tracking", "nfp.train", "nfp.callbacks", "nfp.evaluate", "nfp.predict", "nfp.model")
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
        import nfp.config, nfp.model, nfp.data.moving_mnist, nfp.data.files, nfp.data.images, nfp.data.demo
        assert "tensorflow" not in sys.modules
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={"KERAS_BACKEND": "numpy"}
    )
    assert done.returncode == 0, done.stderr[-2000:]
