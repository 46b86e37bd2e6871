"""Triton Inference Server model repositories: ``<name>/config.pbtxt`` and ``<name>/1/model.onnx|plan``.

The config follows Triton's model-config schema (model_config.proto; tests parse it with the
tritonclient copy of that schema). A dynamic-batch artifact is served with ``max_batch_size`` set
to its maximum and Triton's dynamic batcher on; a static one with ``max_batch_size: 0`` and its full
input shape, since Triton then passes requests through unbatched.
"""

from __future__ import annotations

from resnet_perf.precision import by_dtype

PLATFORMS = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}


def usable_name(name: str) -> bool:
    """Whether ``name`` can name a model: it is the model's folder in the repository, so neither
    empty, nor a path, nor hidden."""
    return bool(name.strip()) and "/" not in name and not name.startswith(".")


def artifact_name(platform: str) -> str:
    """The file name Triton looks for in a version folder, for ``platform``."""
    return PLATFORMS[platform]


def config_pbtxt(name: str, platform: str, manifest: dict, *, instances: int = 1, max_queue_delay_us: int = 100) -> str:
    """The text of ``config.pbtxt`` serving the artifact ``manifest`` describes."""
    batch = manifest["batch"]
    dynamic = batch["min"] != batch["max"]
    if dynamic and batch["min"] != 1:
        # Triton's batcher forms any batch from 1 to max_batch_size; an artifact must accept them all.
        raise ValueError(f"Triton batches requests from 1 up, but this artifact's batch range starts at {batch['min']}")

    def tensors(entries: list[dict]) -> str:
        blocks = []
        for t in entries:
            # With max_batch_size > 0, dims leave out the batch axis: Triton adds it.
            dims = t["shape"][1:] if dynamic else t["shape"]
            # The element type the manifest read back from the artifact, not its precision's: a
            # TensorRT 10 fp16 engine is built from the fp32 graph and keeps fp32 inputs.
            blocks.append(f'  {{\n    name: "{t["name"]}"\n    data_type: TYPE_{by_dtype(t["dtype"]).triton}\n'
                          f'    dims: [ {", ".join(str(d) for d in dims)} ]\n  }}')
        return "[\n" + ",\n".join(blocks) + "\n]"

    # A plan runs only on the GPU it was built for; ONNX runs on GPU where there is one, else CPU.
    kind = "KIND_GPU" if platform == "tensorrt_plan" else "KIND_AUTO"
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {batch['max'] if dynamic else 0}",
        f"input {tensors(manifest['inputs'])}",
        f"output {tensors(manifest['outputs'])}",
    ]
    if dynamic:
        preferred = sorted({batch["opt"], batch["max"]})
        lines.append(f"dynamic_batching {{\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
                     f"  max_queue_delay_microseconds: {max_queue_delay_us}\n}}")
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]")
    return "\n".join(lines) + "\n"
