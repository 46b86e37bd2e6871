"""The lines a layer profile is drawn on: one per convolution, pooling and fc of the model, each
with the ops that follow it on its path (its BatchNorm, ReLU, the block's residual add).

Runtimes fuse differently (onnxruntime a conv with its ReLU, OpenVINO a conv with the add and
ReLU after it, eager not at all), but each keeps the convolutions, so a line per "anchor" (conv,
linear, pool) and the ops that join it is the finest split every backend's time can be put on.
An op joins the latest anchor before it on the same path: the same block's main path, or its
downsample branch, or the stem and head. That is ResNet's structure (``layerN.M.downsample``);
a model that is not ours would need its own rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Op:
    """One op of the model in execution order: ``member`` is its module's path, or for a
    functional op inside a module, that module's path and the op (``layer1.0.add``)."""

    member: str
    anchor: bool  # a convolution, linear or pooling: it opens a line, which the ops after it join


def path_of(member: str) -> str:
    """The path an op runs on: ``layer2.1`` (a block's main path), ``layer2.0.downsample`` (its
    shortcut), or "" (the stem and the head)."""
    parts = member.split(".")
    if len(parts) >= 3 and parts[0].startswith("layer"):
        block = ".".join(parts[:2])
        return f"{block}.downsample" if parts[2] == "downsample" else block
    return ""


def lines(ops: Sequence[Op]) -> list[str]:
    """Each op's line, in the order given, named by its anchor (``layer1.0.conv2``); an op before
    any anchor of its path opens a line of its own."""
    opened: dict[str, str] = {}  # path -> its latest anchor
    out = []
    for op in ops:
        path = path_of(op.member)
        if op.anchor or path not in opened:
            opened[path] = op.member
        out.append(opened[path])
    return out


def label(members: Sequence[str]) -> str:
    """A line as the modules it holds, the anchor first, the rest relative to its path:
    ``layer1.0.conv2+bn2+add+relu``, ``layer1.0.downsample.0+1``, ``conv1+bn1+relu``."""
    first, path = members[0], path_of(members[0])
    prefix = f"{path}." if path else ""
    rest = dict.fromkeys(m.removeprefix(prefix) for m in members[1:] if m != first)
    return "+".join([first, *rest])


def stage_of(line: str) -> str:
    """The ResNet stage a line belongs to (stem, layer1..layer4, head), for plots by stage."""
    head = line.split(".")[0].split("+")[0]
    if head.startswith("layer"):
        return head
    return "head" if head in ("avgpool", "flatten", "fc") else "stem"
