"""Reference ResNets with torchvision-compatible weights, and BatchNorm folding."""

from resnet_perf.build import WeightsError, build_model, layer_names, load_weights, weights_digest
from resnet_perf.fold import fold_batchnorm, fold_conv_bn_weights
from resnet_perf.fused import fuse
from resnet_perf.models.resnet import IMAGENET_CLASSES, MODEL_NAMES
from resnet_perf.synthetic import parity_inputs

__all__ = [
    "IMAGENET_CLASSES",
    "MODEL_NAMES",
    "WeightsError",
    "build_model",
    "fold_batchnorm",
    "fold_conv_bn_weights",
    "fuse",
    "layer_names",
    "load_weights",
    "parity_inputs",
    "weights_digest",
]
