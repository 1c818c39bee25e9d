"""Model export (ONNX, TensorRT) and runtime backends."""
