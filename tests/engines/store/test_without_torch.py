"""Running the models needs no PyTorch: only converting weights does (the 'convert' extra)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from engines.store.model_store import ModelStore
from tests.stream_worker.cli.test_cli import FACESTREAM

BLOCK = '''
import sys

class NoConversionLibraries:
    """As if torch, onnx and onnxscript were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx", "onnxscript"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoConversionLibraries())
'''


def run_without_torch(args: list[str], home: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    (tmp_path / "sitecustomize.py").write_text(BLOCK)
    assert FACESTREAM
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "FACESTREAM__MODELS__HOME": str(home)}
    return subprocess.run([FACESTREAM, *args], capture_output=True, text=True, timeout=300, env=env)


def test_the_models_run_without_torch(model_store: ModelStore, faces_dir: Path, tmp_path: Path) -> None:
    photo = faces_dir / "face_recognition/examples/lin-manuel-miranda.png"
    result = run_without_torch(["analyze", "--json", str(photo)], model_store.home, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["faces"] and "torch" not in result.stderr


def test_converting_without_torch_says_which_extra_to_install(tmp_path: Path) -> None:
    result = run_without_torch(["models", "fetch", "mtcnn"], tmp_path / "empty-cache", tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "converting the 'mtcnn' weights needs PyTorch, onnx and onnxscript" in result.stderr
    assert "pip install 'facestream[convert]'" in result.stderr
    assert not list((tmp_path / "empty-cache").glob("models/*/*.onnx"))  # nothing half-installed
