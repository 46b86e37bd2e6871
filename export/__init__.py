"""Deployment artifacts: ONNX graphs (TensorRT engines and Triton Inference Server repositories follow)."""
