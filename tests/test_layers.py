"""--profile layers: each backend's layers from its own profiler, mapped back to the PyTorch modules
they compute and lined up across backends; the line rule, the ONNX node mapping and the
attribution of fused layers checked on their own, then the whole run on resnet18."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEvent

import bench.__main__ as cli
import resnet_perf
from bench.layers import compiled, torch_modules
from bench.layers.groups import Op, label, lines, stage_of
from bench.layers.onnx_nodes import ANCHORS, NodeLine, attribute, node_lines
from bench.plot import layer_stages
from bench.runners import RUNNERS, RunConfig

SMALL = ["--model", "resnet18", "--image-size", "32", "--streams", "1", "--batch-size", "2", "--warmup", "0", "--iters", "2",
         "--profile", "layers", "--profile-calls", "3"]


def test_ops_join_the_latest_anchor_on_their_path():
    ops = [Op("conv1", True), Op("bn1", False), Op("relu", False), Op("maxpool", True),
           Op("layer1.0.conv1", True), Op("layer1.0.bn1", False), Op("layer1.0.relu", False),
           Op("layer1.0.conv2", True), Op("layer1.0.bn2", False),
           Op("layer1.0.downsample.0", True), Op("layer1.0.downsample.1", False),
           Op("layer1.0.add", False), Op("layer1.0.relu", False), Op("avgpool", True), Op("view", False), Op("fc", True)]
    assert lines(ops) == ["conv1"] * 3 + ["maxpool"] + ["layer1.0.conv1"] * 3 + ["layer1.0.conv2"] * 2 + \
        ["layer1.0.downsample.0"] * 2 + ["layer1.0.conv2"] * 2 + ["avgpool"] * 2 + ["fc"]
    assert label(["layer1.0.conv2", "layer1.0.bn2", "layer1.0.add", "layer1.0.relu"]) == "layer1.0.conv2+bn2+add+relu"
    assert label(["layer1.0.downsample.0", "layer1.0.downsample.1"]) == "layer1.0.downsample.0+1"
    assert [stage_of(a) for a in ("conv1", "maxpool", "layer3.1.conv2", "avgpool", "fc")] == \
        ["stem", "stem", "layer3", "head", "head"]


@pytest.fixture(scope="module")
def resnet18_onnx(tmp_path_factory):
    model = resnet_perf.build_model("resnet18", image_size=32)
    config = RunConfig("resnet18-layers", torch.device("cpu"), "fp32", 2, 32, 2, tmp_path_factory.mktemp("cache"))
    runner = RUNNERS["onnxruntime"](model, config)
    runner.build()
    return model, runner.onnx_path()


def test_every_onnx_node_of_the_export_maps_to_its_modules(resnet18_onnx):
    model, path = resnet18_onnx
    nodes = node_lines(path, model)
    anchors = [name for name, m in model.named_modules() if isinstance(m, ANCHORS)]
    assert sorted({n.line for n in nodes.values()}) == sorted(anchors)  # 20 convs, 2 pools, fc: every node on one
    conv = next(n for n in nodes.values() if "layer1.0.conv1" in n.members)
    assert conv.members == ("layer1.0.conv1", "layer1.0.bn1")  # the exporter folded the BatchNorm into it
    residual = next(n for n in nodes.values() if "layer2.0.add" in n.members)
    assert residual.line == "layer2.0.conv2"  # the add joins its main path, not the shortcut beside it


def test_a_fused_layer_names_every_module_it_absorbed_and_an_unknown_one_is_kept():
    nodes = {"conv": NodeLine("layer1.0.conv2", ("layer1.0.conv2", "layer1.0.bn2"), ("c",)),
             "add": NodeLine("layer1.0.conv2", ("layer1.0.add",), ("a",)),
             "relu": NodeLine("layer1.0.conv2", ("layer1.0.relu",), ("r",)),
             "pool": NodeLine("avgpool", ("avgpool",), ("p",))}
    # onnxruntime names a fused conv after the tensor it ends in (r); the add it absorbed says nothing
    mapped = attribute({"r_fused": ["r"], "pool": ["pool"], "Reorder": ["nothing-we-know"]}, nodes)
    assert mapped["r_fused"] == ("layer1.0.conv2", ("layer1.0.conv2", "layer1.0.bn2", "layer1.0.add", "layer1.0.relu"))
    assert mapped["pool"] == ("avgpool", ("avgpool",))
    assert mapped["Reorder"] == (None, ())


@pytest.mark.slow
def test_profile_layers_lines_up_every_backend_by_module(capsys, tmp_path):
    path, traces = tmp_path / "run.json", tmp_path / "traces"
    assert cli.main([*SMALL, "--backend", "eager,compile,onnxruntime,openvino", "--json", str(path),
                     "--profile-dir", str(traces), "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "time per layer" in out and "slowest layers" in out and "between layers" in out and "timed call" in out
    model = resnet_perf.build_model("resnet18", image_size=32)
    leaves = {name for name, m in model.named_modules() if name and not any(m.children())}
    rows = {r["backend"]: r for r in json.loads(path.read_text())["results"]}
    compiled = rows["compile"]["profile"]["layers"]
    # every convolution inductor ran matched back to its module by shape, the fc by being the one
    # Linear, the pools by the ops their kernels are named for; the rest said to be unattributed
    assert set(compiled["lines"]) == {n for n, m in model.named_modules() if isinstance(m, ANCHORS)}
    assert {layer["kind"] for layer in compiled["layers"] if layer["line"] is None} <= {
        "inductor kernel", "the compiled graph's own code"}
    assert compiled["layer_ms"] + compiled["outside_layers_ms"] == pytest.approx(compiled["wall_ms"])
    for backend in ("eager", "onnxruntime", "openvino"):
        p = rows[backend]["profile"]["layers"]
        assert p["calls"] == 3
        modules = {m for line in p["lines"].values() for m in line["members"]}
        assert leaves <= modules, (backend, leaves - modules)
        assert set(p["lines"]) == {n for n, m in model.named_modules() if isinstance(m, ANCHORS)}
        # nothing dropped: the lines and the unattributed layers are all the layers
        assert sum(line["ms"] for line in p["lines"].values()) + p["unattributed_ms"] == pytest.approx(p["layer_ms"])
        assert p["layer_ms"] + p["outside_layers_ms"] == pytest.approx(p["wall_ms"])
        assert json.loads((traces / p["trace"].rsplit("/", 1)[-1]).read_text())  # written, and it parses
    assert "traceEvents" in json.loads(Path(rows["eager"]["profile"]["layers"]["trace"]).read_text())
    fused = rows["openvino"]["profile"]["layers"]["lines"]["layer1.0.conv2"]
    assert fused["label"] == "layer1.0.conv2+bn2+add+relu"  # OpenVINO's one fused layer names all four
    for backend in ("eager", "onnxruntime", "openvino"):
        p = rows[backend]["profile"]["layers"]
        assert sum(layer_stages(p).values()) == pytest.approx(p["wall_ms"])  # the report's bars add up
    assert cli.main(["report", str(path), "--output", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "run-layers.png").stat().st_size > 0
    assert "(run-layers.png)" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.slow
def test_int8_layers_map_through_the_quantized_graph(tmp_path):
    path = tmp_path / "run.json"
    assert cli.main([*SMALL, "--backend", "onnxruntime,openvino", "--precision", "int8", "--json", str(path),
                     "--cache-dir", str(tmp_path / "cache")]) == 0
    for r in json.loads(path.read_text())["results"]:
        p = r["profile"]["layers"]
        assert len(p["lines"]) == 23  # QLinearConv / OpenVINO's int8 convolutions, back on their modules
        # On no line: the input's and the pooled features' layout and quantization, a few small ops;
        # counted, not timed (in one CI run a preempted call made a 0.01 ms Transpose take 2 ms).
        unattributed = [layer for layer in p["layers"] if layer["line"] is None]
        assert len(unattributed) <= 4, unattributed
        assert not any(re.search("conv|gemm", layer["kind"], re.IGNORECASE) for layer in unattributed)
        kinds = {layer["kind"] for layer in p["layers"]}
        assert ("QLinearConv" in kinds) if r["backend"] == "onnxruntime" else any("I8" in k for k in kinds)


def test_profile_dir_needs_a_layer_profile(capsys, tmp_path):
    code = cli.main(["--model", "resnet18", "--profile", "stages", "--profile-dir", str(tmp_path)])
    assert code == 2
    assert "--profile-dir keeps the traces of --profile layers" in capsys.readouterr().err


@pytest.mark.slow
def test_each_fused_triton_launch_is_on_its_reference_line(tmp_path):
    model = resnet_perf.build_model("resnet18", image_size=32)
    config = RunConfig("resnet18-layers", torch.device("cpu"), "fp32", 1, 32, 2, tmp_path)
    with RUNNERS["triton"](model, config) as runner:
        profile = runner.profile_layers(runner.to_input(torch.randn(1, 3, 32, 32)), 1, None).to_json()
    assert set(profile["lines"]) == {n for n, m in model.named_modules() if isinstance(m, ANCHORS)}
    assert profile["lines"]["layer2.0.conv2"]["label"] == "layer2.0.conv2+bn2+add+relu"  # one launch, four modules
    assert profile["lines"]["layer2.0.downsample.0"]["label"] == "layer2.0.downsample.0+1"
    assert profile["notes"] == ["Triton's interpreter: the times are not performance figures"]


def cuda_event(name: str, start: float, end: float, kernels=(), children=(), shapes=None) -> FunctionEvent:
    """A CPU-side event of a CUDA profile as torch's kineto parser builds it: the kernels it launched
    appended, its child ops linked."""
    event = FunctionEvent(id=0, name=name, thread=0, start_us=start, end_us=end, use_device="cuda",
                          input_shapes=shapes or [])
    for kernel, us in kernels:
        event.append_kernel(kernel, 0, us)
    for child in children:
        event.append_cpu_child(child)
        child.set_cpu_parent(event)
    return event


def gpu_annotation(name: str, start: float, end: float) -> FunctionEvent:
    """The copy of a record_function scope the profiler puts on the GPU's timeline."""
    return FunctionEvent(id=0, name=name, thread=0, start_us=start, end_us=end, use_device="cuda",
                         device_type=DeviceType.CUDA, is_user_annotation=True)


def test_a_cuda_profile_counts_each_module_scope_once_at_its_kernels_time(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    leaves = [cuda_event("0#0", 10, 40, [("cudnn_conv", 25.0)]), cuda_event("1#0", 40, 60, [("bn", 5.0)]),
              cuda_event("2#0", 60, 80, [("relu", 3.0)])]
    events = [cuda_event("Sequential#0", 0, 100, children=leaves), *leaves,
              *(gpu_annotation(e.name, e.time_range.start + 500, e.time_range.end + 500) for e in leaves)]
    monkeypatch.setattr(torch_modules, "torch_profiled", lambda *args, **kw: (events, 0.2))
    profile = torch_modules.profile_module(model, lambda: None, 1, torch.device("cuda"), None)
    assert sorted((layer.name, layer.ms, layer.line) for layer in profile.layers) == [
        ("0#0", 0.025, "0"), ("1#0", 0.005, "0"), ("2#0", 0.003, "0"), ("Sequential#0", 0.0, None)]


def test_a_compiled_cuda_profile_names_inductor_kernels_and_library_ops(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                torch.nn.Linear(36, 2), torch.nn.ReLU()).eval()
    conv = cuda_event("aten::convolution", 10, 30, shapes=[[1, 3, 8, 8], [4, 3, 3, 3], [4]],
                      children=[cuda_event("aten::cudnn_convolution", 11, 29, [("sm90_xmma_fprop", 20.0)])])
    fc = cuda_event("aten::addmm", 50, 60, [("sm90_gemm", 4.0)])
    graph = cuda_event("## Call CompiledFxGraph f1 ##", 0, 100, [("triton_poi_fused_max_pool2d_with_indices_0", 7.0),
                       ("triton_poi_fused_relu_1", 2.0)], children=[conv, fc])
    events = [graph, conv, *conv.cpu_children, fc, gpu_annotation(graph.name, 400, 450)]
    monkeypatch.setattr(compiled, "torch_profiled", lambda *args, **kw: (events, 0.1))
    profile = compiled.profile_compiled(model, lambda: None, torch.randn(1, 3, 8, 8), 1, torch.device("cuda"), None)
    assert [(layer.name, layer.ms, layer.line) for layer in profile.layers] == [
        ("0", 0.02, "0"), ("3", 0.004, "3"),
        ("triton_poi_fused_max_pool2d_with_indices_0", 0.007, "1"),
        ("triton_poi_fused_relu_1", 0.002, None),  # pointwise: could be any module's
        ("inductor graph, outside its kernels", 0.0, None)]


def test_a_kernel_is_named_only_for_modules_the_model_holds_one_of():
    model = resnet_perf.build_model("resnet18", image_size=32)
    assert compiled.kernel_modules("graph_0_cpp_fused_addmm_mean_view_3", model) == ("avgpool", "fc")
    assert compiled.kernel_modules("triton_per_fused_mean_2", model) == ("avgpool",)
    assert compiled.kernel_modules("cpp_fused_max_pool2d_with_indices_1", model) == ("maxpool",)
    assert compiled.kernel_modules("cpp_fused_add_relu_4", model) == ()  # a ReLU of any block
    assert compiled.kernel_modules("sm90_xmma_fprop_implicit_gemm", model) == ()  # not inductor's
    two_fcs = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    assert compiled.kernel_modules("triton_tem_fused_addmm_0", two_fcs) == ()
