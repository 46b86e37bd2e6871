"""``build_model``: a reference ResNet by name, with checkpoint weights or the synthetic stand-in."""

from __future__ import annotations

import hashlib
import os
import pickle
import re

import torch
from torch import nn

from resnet_perf.models.resnet import IMAGENET_CLASSES, MODEL_NAMES, _resnet
from resnet_perf.synthetic import calibrate
from resnet_perf.util.cli import one_line


class WeightsError(ValueError):
    """A weights file that is missing, unreadable, or does not fit the model asked for."""


def build_model(
    name: str,
    num_classes: int = IMAGENET_CLASSES,
    weights: str | os.PathLike | None = None,
    *,
    image_size: int = 224,
    seed: int = 0,
) -> nn.Module:
    """An eval-mode fp32 ResNet on the CPU.

    With ``weights`` (a state_dict saved by torchvision or by this project) the model holds exactly
    those. Without, it is initialised from ``seed`` and calibrated for ``image_size`` by
    ``resnet_perf.synthetic.calibrate``, so that it tells the parity inputs apart.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
    if image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size}")

    # Forking the RNG keeps the global stream untouched, so building a model has no side effect
    # on a caller's own random numbers.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _resnet(name, num_classes)
    if weights is None:
        calibrate(model, image_size, seed)
    else:
        load_weights(model, weights, name)
    return model.eval()


def load_weights(model: nn.Module, path: str | os.PathLike, name: str = "model") -> None:
    """Load a state_dict from ``path`` into ``model`` strictly, turning every failure into WeightsError."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise WeightsError(f"weights file {path}: is a directory; give the state_dict file in it")
    if not os.path.isfile(path):
        raise WeightsError(f"weights file not found: {path}")
    try:
        # weights_only: a checkpoint is data; unpickling arbitrary objects from it would run code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names the first class the file would have to instantiate; its advice (load with
        # weights_only=False) is the code execution this refuses, so it is not passed on.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:
            # torch's own reason, without its advice to load with weights_only=False.
            reason = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", str(exc), re.S)
            detail = " ".join(reason[1].split()) if reason else "the unpickler refused it"
            raise WeightsError(f"weights file {path} is not a readable PyTorch state_dict ({detail})") from None
        raise WeightsError(f"weights file {path} holds pickled Python objects ({found[1]}), e.g. a whole model "
                           "or a training checkpoint; only a state_dict of tensors is loaded, since unpickling "
                           "objects would run code from the file: save model.state_dict() instead") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt pickle fails in many ways (seen: IndexError)
        raise WeightsError(f"weights file {path} is not a readable PyTorch state_dict "
                           f"({one_line(exc, first_line=True)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a state_dict (a mapping of names to tensors)")

    expected = model.state_dict()
    # Checkpoints from before BatchNorm counted its batches lack num_batches_tracked; PyTorch's own
    # strict loading accepts them (the count is unused in eval), and so do we.
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"weights file {path} does not match {name}: "
            f"missing {_preview(missing)}, unexpected {_preview(unexpected)}"
        )
    empty = [k for k, v in state.items() if v.is_meta]
    if empty:
        raise WeightsError(f"weights file {path} holds tensors without data (on the meta device: {_preview(empty)}); "
                           "save the state_dict of a model whose weights were materialized")
    kinds = [k for k, v in state.items() if v.is_complex() or v.is_floating_point() != expected[k].is_floating_point()]
    if kinds:
        k = kinds[0]
        raise WeightsError(f"weights file {path} does not match {name}: {k} is {state[k].dtype}, the model's is "
                           f"{expected[k].dtype} ({len(kinds)} tensor(s) of the wrong kind)")
    wrong = [k for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        k = wrong[0]
        raise WeightsError(
            f"weights file {path} does not match {name}: {k} has shape {tuple(state[k].shape)}, "
            f"the model has {tuple(expected[k].shape)} ({len(wrong)} tensor(s) differ; check num_classes)"
        )
    model.load_state_dict(state, strict=True)


def layer_names(name: str) -> list[str]:
    """The module names of ``name``'s convolutions and classifier ("conv1", ..., "fc"): the layers
    a user can name, e.g. to keep them out of INT8 quantization."""
    with torch.device("meta"):  # the structure only: no memory, no initialisation
        return layers_of(_resnet(name, IMAGENET_CLASSES))


def layers_of(model: nn.Module) -> list[str]:
    """``layer_names`` of a model at hand, in model order."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def weights_digest(model: nn.Module) -> str:
    """sha256 over the state_dict's names and values: which weights a model (or an artifact exported
    from it) holds, whatever file or seed they came from."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _preview(keys: list[str], limit: int = 3) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} key(s) ({shown}{', ...' if len(keys) > limit else ''})"
