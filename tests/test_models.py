"""The reference ResNets: structure, torchvision compatibility, weights loading, the synthetic model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import resnet_perf
from resnet_perf import WeightsError, build_model, parity_inputs
from resnet_perf.models import BasicBlock, Bottleneck, resnet18, resnet34, resnet50, resnet101, resnet152
from tests.torchvision_reference import torchvision_resnet

# Parameter counts of the ImageNet ResNets (1000 classes), as torchvision's model cards give them.
PARAMETERS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
BUILDERS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101, "resnet152": resnet152}


@pytest.mark.parametrize("name", resnet_perf.MODEL_NAMES)
def test_parameter_count(name):
    model = BUILDERS[name]()
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[name]


@pytest.mark.parametrize("name", resnet_perf.MODEL_NAMES)
def test_state_dict_matches_torchvision(name):
    tv = getattr(torchvision_resnet(), name)()
    ours = BUILDERS[name]()
    assert list(ours.state_dict()) == list(tv.state_dict())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in tv.state_dict().items()}


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_checkpoint_loads_strictly_and_matches_outputs(name, tmp_path):
    tv = getattr(torchvision_resnet(), name)()
    with torch.no_grad():  # non-trivial statistics, so the comparison covers BatchNorm too
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.1, 0.5)
    tv.eval()
    path = tmp_path / f"{name}.pth"
    torch.save(tv.state_dict(), path)

    ours = build_model(name, weights=path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=0)


def test_bottleneck_strides_on_its_3x3_and_projects_the_shortcut():
    model = resnet50()
    first = model.layer2[0]
    assert isinstance(first, Bottleneck)
    assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2) and first.conv2.kernel_size == (3, 3)
    conv, bn = first.downsample
    assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and conv.out_channels == 512
    assert isinstance(bn, nn.BatchNorm2d)
    # layer1 widens 64 -> 256 at stride 1: a projection there too, none in later blocks.
    assert model.layer1[0].downsample is not None and model.layer1[1].downsample is None


def test_basic_block_projects_only_where_shape_changes():
    model = resnet18()
    assert isinstance(model.layer1[0], BasicBlock) and model.layer1[0].downsample is None
    assert model.layer2[0].downsample[0].stride == (2, 2)
    assert model.layer2[1].downsample is None


@pytest.mark.parametrize("size", [32, 64, 96])
def test_output_shape(size):
    model = build_model("resnet18", num_classes=10, image_size=size)
    assert model(torch.randn(3, 3, size, size)).shape == (3, 10)


def test_synthetic_model_is_deterministic_and_seeded():
    a = build_model("resnet18", image_size=32, seed=0).state_dict()
    b = build_model("resnet18", image_size=32, seed=0).state_dict()
    c = build_model("resnet18", image_size=32, seed=1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_building_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("resnet18", image_size=32)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size"), [("resnet18", 32), ("resnet18", 64), ("resnet34", 32), ("resnet50", 32),
                                            ("resnet50", 64), ("resnet101", 32), ("resnet152", 32)])
def test_synthetic_model_tells_the_parity_inputs_apart(name, size):
    """The issue's bar: at least 90% of a 64-input parity batch get distinct top-1 classes."""
    model = build_model(name, image_size=size)
    with torch.no_grad():
        logits = model(parity_inputs(64, size))
    top1 = logits.argmax(dim=1)
    assert top1.unique().numel() >= 0.9 * 64
    # ... and not only barely: the runner-up is well behind, so fp32 rounding cannot flip a class.
    top2 = logits.topk(2, dim=1).values
    assert ((top2[:, 0] - top2[:, 1]) / logits.std(dim=1)).min() > 0.5


@pytest.mark.slow
def test_random_init_alone_would_not_be_discriminative():
    """Why calibrate exists: the uncalibrated model gives most parity inputs one class."""
    torch.manual_seed(0)
    model = resnet50().eval()
    with torch.no_grad():
        top1 = model(parity_inputs(64, 32)).argmax(dim=1)
    assert top1.unique().numel() < 0.5 * 64


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'resnet51'"):
        build_model("resnet51")


def test_missing_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        build_model("resnet18", weights=tmp_path / "absent.pth")


def test_corrupt_weights_file(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable PyTorch state_dict"):
        build_model("resnet18", weights=path)


def test_weights_file_holding_code_is_refused(tmp_path):
    """weights_only=True: a pickle that would construct arbitrary objects is not loaded."""
    path = tmp_path / "object.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": object.__new__(_Arbitrary)}, path)
    with pytest.raises(WeightsError, match=r"holds pickled Python objects \(tests.test_models._Arbitrary\)"):
        build_model("resnet18", weights=path)


def test_a_whole_model_saved_is_refused_in_one_exact_sentence(tmp_path):
    """torch.save(model) rather than its state_dict: the message names the class, says why it is
    refused and what to save instead, with none of torch's colour codes or advice to unpickle."""
    path = tmp_path / "model.pth"
    torch.save(build_model("resnet18", image_size=32), path)
    with pytest.raises(WeightsError) as caught:
        build_model("resnet18", weights=path)
    message = str(caught.value)
    assert "(resnet_perf.models.resnet.ResNet)" in message and message.endswith("save model.state_dict() instead")
    assert "\x1b" not in message and "weights_only=False" not in message and "\n" not in message


def test_a_file_that_is_no_pickle_is_refused_without_torchs_advice_to_unpickle_it(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"schema": 1}')
    with pytest.raises(WeightsError) as caught:
        build_model("resnet18", weights=path)
    assert str(caught.value) == f"weights file {path} is not a readable PyTorch state_dict (Unsupported operand 123)"


def test_weights_without_data_or_of_the_wrong_kind_are_refused(tmp_path):
    state = build_model("resnet18", image_size=32).state_dict()
    torch.save({k: torch.empty_like(v, device="meta") for k, v in state.items()}, tmp_path / "meta.pth")
    with pytest.raises(WeightsError, match=r"holds tensors without data \(on the meta device: "):
        build_model("resnet18", weights=tmp_path / "meta.pth")
    state["fc.weight"] = state["fc.weight"].to(torch.complex64)
    torch.save(state, tmp_path / "complex.pth")
    with pytest.raises(WeightsError, match="fc.weight is torch.complex64, the model's is torch.float32"):
        build_model("resnet18", weights=tmp_path / "complex.pth")


def test_a_directory_given_as_weights_is_named_as_one(tmp_path):
    with pytest.raises(WeightsError, match="is a directory; give the state_dict file in it"):
        build_model("resnet18", weights=tmp_path)


class _Arbitrary:
    pass


def test_weights_of_another_model(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(resnet18().state_dict(), path)
    with pytest.raises(WeightsError, match="does not match resnet50: missing"):
        build_model("resnet50", weights=path)


def test_weights_with_another_class_count(tmp_path):
    path = tmp_path / "r18-10.pth"
    torch.save(resnet18(num_classes=10).state_dict(), path)
    with pytest.raises(WeightsError, match=r"fc.weight has shape \(10, 512\).*num_classes"):
        build_model("resnet18", weights=path)


def test_checkpoint_without_num_batches_tracked_loads(tmp_path):
    """Older checkpoints lack the BatchNorm batch counters; strict PyTorch loading accepts that."""
    state = {k: v for k, v in resnet18().state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "legacy.pth"
    torch.save(state, path)
    model = build_model("resnet18", weights=path)
    assert torch.equal(model.fc.weight, state["fc.weight"])
