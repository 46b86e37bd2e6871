"""Each node of our ONNX export, mapped back to the modules it computes and the profile line it
belongs to, for the runtimes that run the export (onnxruntime, OpenVINO, TensorRT) and name their
layers after its nodes.

torch.onnx's dynamo exporter records every node's module scope in its metadata
(``pkg.torch.onnx.name_scopes``: ``['', 'layer1', 'layer1.0', 'layer1.0.bn1', <fx node>]``); a
convolution it fused with its BatchNorm keeps the BatchNorm's scope and the convolution's weight
(``layer1.0.conv1.weight``), so it is both. Nodes without a scope (the quantizer's
QuantizeLinear/DequantizeLinear, a constant) take the line of the node whose output they read, or
failing that of the node that reads theirs.
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass

import onnx
from torch import nn

from bench.layers.groups import Op, lines

ANCHORS = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_SCOPES = "pkg.torch.onnx.name_scopes"


@dataclass(frozen=True)
class NodeLine:
    line: str | None  # the anchor of the profile line the node's time goes to; None: unmapped
    members: tuple[str, ...]  # the modules (and functional ops) it computes; () where it has no scope
    outputs: tuple[str, ...] = ()  # its output tensors, which some runtimes name their layers after


def _members(node: onnx.NodeProto, leaves: dict[str, nn.Module]) -> list[str]:
    scopes = next((ast.literal_eval(p.value) for p in node.metadata_props if p.key == _SCOPES), None)
    if not scopes or len(scopes) < 2:
        return []
    module, fx_node = scopes[-2], re.sub(r"_\d+$", "", scopes[-1])
    members = [module] if module in leaves else [f"{module}.{fx_node}" if module else fx_node]
    # A convolution folded with its BatchNorm carries the BatchNorm's scope and the conv's weight.
    weights = dict.fromkeys(name.split(".weight")[0] for name in node.input if ".weight" in name)
    return [w for w in weights if w in leaves and w not in members] + members


def node_lines(path: str | os.PathLike, model: nn.Module) -> dict[str, NodeLine]:
    """Every node of the ONNX file at ``path`` (exported from ``model``) by name."""
    return _node_lines(onnx.load(str(path), load_external_data=False).graph, model)


def _node_lines(graph: onnx.GraphProto, model: nn.Module) -> dict[str, NodeLine]:
    leaves = {name: m for name, m in model.named_modules() if name and not any(m.children())}
    members = {node.name: _members(node, leaves) for node in graph.node}
    ops = [(node.name, Op(m, isinstance(leaves.get(m), ANCHORS))) for node in graph.node for m in members[node.name]]
    line_of_op = lines([op for _, op in ops])
    found: dict[str, str] = {}
    for (name, op), line in zip(ops, line_of_op, strict=True):
        if op.anchor or name not in found:
            found[name] = line
    _by_dataflow(graph, found)
    return {node.name: NodeLine(found.get(node.name), tuple(members[node.name]), tuple(node.output))
            for node in graph.node}


def attribute(layers: dict[str, list[str]], nodes: dict[str, NodeLine]) -> dict[str, tuple[str | None, tuple[str, ...]]]:
    """Each runtime layer, given the ONNX nodes it says it computes (by node name, or by the name
    of a tensor a node produces), to its line and modules. A layer of several lines goes on its
    anchor's (the convolution's, not the ReLU's). Nodes that no layer names, which the runtime
    fused away without saying where, join the layer holding their line's anchor, so a fused layer
    names every module it absorbed; a layer of no known node has no line."""
    index = {name: i for i, name in enumerate(nodes)}
    producer = {out: name for name, node in nodes.items() for out in node.outputs}
    out: dict[str, tuple[str | None, set[str]]] = {}
    named: set[str] = set()
    for name, claimed in layers.items():
        ours = {n if n in nodes else producer[n] for n in claimed if n in nodes or n in producer}
        named |= ours
        found = [nodes[n] for n in sorted(ours, key=index.__getitem__)]
        line = next((n.line for n in found if n.line in n.members), None) or next((n.line for n in found if n.line), None)
        out[name] = line, ours
    for name, node in nodes.items():
        if name in named or node.line is None or not node.members:
            continue
        holders = [layer for layer, (line, _) in out.items() if line == node.line]
        anchor = next((layer for layer in holders if node.line in _modules_of(out[layer][1], nodes, index)),
                      holders[0] if holders else None)
        if anchor is not None:
            out[anchor][1].add(name)
    return {name: (line, _modules_of(ours, nodes, index)) for name, (line, ours) in out.items()}


def _modules_of(names: set[str], nodes: dict[str, NodeLine], index: dict[str, int]) -> tuple[str, ...]:
    """The modules of ``names``, in the graph's order."""
    return tuple(dict.fromkeys(m for n in sorted(names, key=index.__getitem__) for m in nodes[n].members))


def _by_dataflow(graph: onnx.GraphProto, found: dict[str, str]) -> None:
    """Lines for the nodes without a scope, from their neighbours: first the producer of an
    input, then a consumer of an output, repeated until nothing changes."""
    producer = {out: node for node in graph.node for out in node.output}
    consumers = _consumers(graph)
    changed = True
    while changed:
        changed = False
        for node in graph.node:
            if node.name in found:
                continue
            neighbours = [producer[i] for i in node.input if i in producer]
            neighbours += [c for out in node.output for c in consumers.get(out, [])]
            line = next((found[n.name] for n in neighbours if n.name in found), None)
            if line is not None:
                found[node.name] = line
                changed = True


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """The nodes reading each tensor, by its name."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def _line_ends(graph: onnx.GraphProto, model: nn.Module) -> dict[str, str]:
    """Each line's end tensor: the first output of its last node with a module scope."""
    nodes = _node_lines(graph, model)
    return {nodes[node.name].line: node.output[0] for node in graph.node
            if nodes[node.name].line is not None and nodes[node.name].members}


def line_ends(path: str | os.PathLike, model: nn.Module) -> dict[str, str]:
    """Each line's end tensor in the ONNX file at ``path``, by name, for runtimes that keep the
    ONNX tensor names (OpenVINO, its IR converted from this file, TensorRT's parsed network)."""
    return _line_ends(onnx.load(str(path), load_external_data=False).graph, model)


def _reader(tensor: str, op_type: str, consumers: dict[str, list[onnx.NodeProto]]) -> onnx.NodeProto | None:
    """The first node of ``op_type`` that reads ``tensor``, if any."""
    return next((c for c in consumers.get(tensor, []) if c.op_type == op_type), None)


def line_reads(path: str | os.PathLike, model: nn.Module) -> tuple[dict[str, str], bool]:
    """Each line's end in the ONNX file at ``path`` as the next layer reads it: the end itself, or,
    where the graph quantizes it, the output of its own DequantizeLinear after the Quantize (for a
    runtime that marks existing tensors as outputs, TensorRT). Returns them, and whether any line
    is read after requantization."""
    graph = onnx.load(str(path), load_external_data=False).graph
    consumers = _consumers(graph)
    reads, requantized = {}, False
    for line, tensor in _line_ends(graph, model).items():
        quantize = _reader(tensor, "QuantizeLinear", consumers)
        dequantize = None if quantize is None else _reader(quantize.output[0], "DequantizeLinear", consumers)
        if dequantize is not None:
            tensor, requantized = dequantize.output[0], True
        reads[line] = tensor
    return reads, requantized


def with_line_outputs(path: str | os.PathLike, model: nn.Module) -> tuple[bytes, dict[str, str], bool]:
    """The ONNX file at ``path`` with each line's end as a graph output. In a QDQ graph a line's
    end is quantized for the next layer (Quantize, then Dequantize); there the output is a new
    DequantizeLinear beside the existing one, reading the same Quantize: the value the next layer
    reads, while the graph's own Q/DQ pairs, and so the runtime's int8 fusions, stay as they were.
    Returns the model, each line's output name, and whether any line was read after
    requantization."""
    graph_model = onnx.load(str(path), load_external_data=False)
    graph = graph_model.graph
    consumers = _consumers(graph)
    outputs = {o.name for o in graph.output}
    names, requantized = {}, False
    for line, tensor in _line_ends(graph, model).items():
        quantize = _reader(tensor, "QuantizeLinear", consumers)
        if quantize is not None:
            dequantized = f"{tensor}/line_parity_dq"
            graph.node.append(onnx.helper.make_node("DequantizeLinear", [quantize.output[0], *quantize.input[1:]],
                                                    [dequantized], name=f"{quantize.name}/line_parity_dq"))
            tensor, requantized = dequantized, True
        if tensor not in outputs:
            graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
            outputs.add(tensor)
        names[line] = tensor
    return graph_model.SerializeToString(), names, requantized
