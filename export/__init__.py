"""Deployment artifacts: ONNX graphs, TensorRT engines and Triton Inference Server repositories, each
checked against the PyTorch model before it is kept and described by a manifest."""
