"""The fused ResNet: every conv + BatchNorm (+ shortcut add) (+ ReLU) as one Triton kernel call.

Built from an eval-mode reference model by ``fuse``: BatchNorm is folded into the convs
(resnet_perf.fold), and the weights are cast and re-laid out once (K innermost, see
kernels.fused_conv2d.pack_weight; the 3-channel stem's padded to 4 channels, as its kernel path
wants), so a forward pass does no weight work. The stem's max-pool, the global average pool and
the classifier stay PyTorch: they are a small share of the time.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from resnet_perf.fold import fold_batchnorm
from resnet_perf.models.resnet import IMAGENET_CLASSES, BasicBlock, Bottleneck, ResNet, _resnet


class FusedConv(nn.Module):
    """One folded conv with its epilogue: ``relu?(conv(x) + bias + residual?)``."""

    def __init__(self, conv: nn.Conv2d, relu: bool, dtype: torch.dtype):
        super().__init__()
        # kernels need Triton: only the fused model does
        from kernels.fused_conv2d import kernel_channels, pack_weight, pad_channels

        if conv.groups != 1 or conv.dilation != (1, 1):
            raise ValueError("fused convolutions support groups=1 and dilation=1 only")
        weight = pad_channels(conv.weight.detach().to(dtype), kernel_channels(conv.in_channels))
        self.register_buffer("weight", pack_weight(weight))
        # The epilogue adds the bias in fp32, so it is kept in fp32 whatever the activations are.
        self.register_buffer("bias", conv.bias.detach().float())
        self.stride = list(conv.stride)
        self.padding = list(conv.padding)
        self.relu = relu

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        if x.shape[1] != self.weight.shape[1]:  # the stem: its input padded once per forward, as its weights were
            from kernels.fused_conv2d import pad_channels

            x = pad_channels(x, self.weight.shape[1])
        return torch.ops.resnet_perf.fused_conv2d(x, self.weight, self.bias, self.stride, self.padding, residual, self.relu)


class FusedBasicBlock(nn.Module):
    def __init__(self, block: BasicBlock, dtype: torch.dtype):
        super().__init__()
        self.conv1 = FusedConv(block.conv1, relu=True, dtype=dtype)
        self.conv2 = FusedConv(block.conv2, relu=True, dtype=dtype)  # + shortcut, then ReLU
        self.downsample = FusedConv(block.downsample[0], relu=False, dtype=dtype) if block.downsample else None

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv2(self.conv1(x), residual=identity)


class FusedBottleneck(nn.Module):
    def __init__(self, block: Bottleneck, dtype: torch.dtype):
        super().__init__()
        self.conv1 = FusedConv(block.conv1, relu=True, dtype=dtype)
        self.conv2 = FusedConv(block.conv2, relu=True, dtype=dtype)
        self.conv3 = FusedConv(block.conv3, relu=True, dtype=dtype)  # + shortcut, then ReLU
        self.downsample = FusedConv(block.downsample[0], relu=False, dtype=dtype) if block.downsample else None

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv3(self.conv2(self.conv1(x)), residual=identity)


class FusedResNet(nn.Module):
    def __init__(self, model: ResNet, dtype: torch.dtype):
        super().__init__()
        self.conv1 = FusedConv(model.conv1, relu=True, dtype=dtype)
        self.maxpool = model.maxpool
        blocks = {BasicBlock: FusedBasicBlock, Bottleneck: FusedBottleneck}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            layer = getattr(model, name)
            setattr(self, name, nn.Sequential(*(blocks[type(b)](b, dtype) for b in layer)))
        self.avgpool = model.avgpool
        self.fc = nn.Linear(model.fc.in_features, model.fc.out_features).to(dtype)
        self.fc.load_state_dict({k: v.to(dtype) for k, v in model.fc.state_dict().items()})

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))

    def stages(self) -> list[tuple[str, nn.Module]]:
        """The same six stages as the reference model's ``stages``."""
        return [("stem", nn.Sequential(self.conv1, self.maxpool)),
                ("layer1", self.layer1), ("layer2", self.layer2), ("layer3", self.layer3), ("layer4", self.layer4),
                ("head", nn.Sequential(self.avgpool, nn.Flatten(1), self.fc))]


@torch.no_grad()
def fuse(model: ResNet, dtype: torch.dtype = torch.float32) -> FusedResNet:
    """A new eval-mode model computing ``model``'s forward with fused Triton convolutions in
    ``dtype``. ``model`` is left untouched; its device is kept."""
    if not isinstance(model, ResNet):
        raise TypeError(f"fuse expects a resnet_perf ResNet, got {type(model).__name__}")
    device = next(model.parameters()).device
    return FusedResNet(fold_batchnorm(model), dtype).to(device).eval()


def conv_layers(name: str, image_size: int = 224, batch_size: int = 1) -> list:
    """Every convolution of the fused model ``name`` as it is launched (kernels.aot.Conv): found by
    running the fused model on the meta device, where nothing is computed or allocated."""
    from kernels.aot import Conv

    with torch.device("meta"):
        fused = fuse(_resnet(name, IMAGENET_CLASSES))
    layers = []

    def record(module_name: str):
        def hook(module: FusedConv, args: tuple, kwargs: dict) -> None:
            n, c, h, w = args[0].shape
            k, _, kh, kw = module.weight.shape
            layers.append(Conv(module_name, n, c, h, w, k, (kh, kw), tuple(module.stride), tuple(module.padding),
                               kwargs.get("residual") is not None, module.relu))
        return hook

    for module_name, module in fused.named_modules():
        if isinstance(module, FusedConv):
            module.register_forward_pre_hook(record(module_name), with_kwargs=True)
    with torch.no_grad():
        fused(torch.empty(batch_size, 3, image_size, image_size, device="meta"))
    return layers
