"""Shared by test_export.py and test_runtime_bench.py: one ONNX export per test session, real sample photos."""

from __future__ import annotations

import contextlib
import importlib
import shutil
from pathlib import Path

import pytest
from conftest import skip_or_fail
from sample_helpers import sample_photos

from pyfundus.api import load_model
from pyfundus.cli import main
from pyfundus.export import runtimes

# Real photos of different cameras and formats (the DICOM is a Topcon capture).
PARITY_SAMPLES = ("skimage_retina.png", "CHASEDB1_08L.png", "HRF_04_g.jpg", "issue_3.dcm")


def export_extra(module: str):
    """The export extra is part of the test extra: in CI a missing package fails instead of skipping."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        skip_or_fail(f"needs the export extra: pip install -e '.[export]' ({exc})")


def default_model():
    """The shipped FTHNet-S, what users export and run."""
    return load_model("fthnet_s")


@contextlib.contextmanager
def export_cache(tmp_path_factory):
    """A cache folder for exports shared by every test module of this session (so the model is
    traced once per session), in place of the user's ~/.cache/pyfundus/export."""
    folder = tmp_path_factory.getbasetemp() / "pyfundus-export-cache"
    folder.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtimes, "cache_dir", lambda: folder)  # ONNX exports and TensorRT engines
        yield folder


def cli_fp32_export(model, tmp_path_factory) -> Path:
    """The fp32 ONNX of ``model`` made by ``pyfundus export`` once per session, placed where
    load_model(backend="onnxruntime"/"auto") looks for it. Needs export_cache active."""
    cached = runtimes.cached_onnx_path(model.network, model.config, model.name, "fp32")
    if not cached.exists():
        output = tmp_path_factory.mktemp("cli-export") / "fthnet_s.onnx"
        assert main(["export", "--format", "onnx", "--model", "fthnet_s", "--output", str(output)]) == 0
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(output, cached)
    return cached


def parity_samples() -> list[Path]:
    paths = {path.name: path for path in sample_photos()}
    return [paths[name] for name in PARITY_SAMPLES]
