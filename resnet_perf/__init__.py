"""Reference ResNet-18..152 with torchvision-compatible weights (or synthetic ones that can fail
parity), BatchNorm folding, the fused Triton model and the parity check; the images they take
(images, synthetic); ``python -m resnet_perf.aot``, the kernels compiled for every convolution of
the models. The utilities every command shares live in resnet_perf.util."""

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
