"""Model export (ONNX, TensorRT) and the runtime backends behind ``pyfundus.load_model(backend=...)``.

``pyfundus.export.onnx``: :func:`export_onnx` and the file's metadata.
``pyfundus.export.runtimes``: torch, ONNX Runtime and the ``auto`` choice.
``pyfundus.export.tensorrt``: engine build, sidecar checks and the TensorRT runtime (TensorRT imported lazily).
"""

from .onnx import export_onnx, read_metadata
from .runtimes import BACKENDS, PRECISIONS, Runtime, create_runtime

__all__ = ["BACKENDS", "PRECISIONS", "Runtime", "create_runtime", "export_onnx", "read_metadata"]
