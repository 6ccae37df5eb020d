"""Architectures: the paper's parameter counts, torchvision layer names, the
in-model normalisation, and forward passes on digits- and CIFAR-sized input."""
import pytest
import torch

from models import build_model, model_names

PAPER_PARAMS = {  # millions; CIFAR models at 10 classes, res50 with the ImageNet stem at 1000
    "wrn32": 1.86, "res18": 11.22, "res34": 21.28, "mobilenet": 3.21, "vgg16_bn": 14.72, "res50": 25.56}


@pytest.mark.parametrize("arch", sorted(PAPER_PARAMS))
def test_parameter_count_matches_paper(arch):
    imagenet = arch == "res50"
    model = build_model(arch, 1000 if imagenet else 10, 3, imagenet_stem=imagenet)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - PAPER_PARAMS[arch]) / PAPER_PARAMS[arch] < 0.01, count


@pytest.mark.parametrize("arch", model_names())
def test_forward_on_digits_and_cifar_shapes(arch):
    torch.manual_seed(0)
    digits = build_model(arch, 10, 1, (0.3,), (0.2,)).eval()
    assert digits(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    if arch in ("res20s", "res18"):
        cifar = build_model(arch, 100, 3).eval()
        assert cifar(torch.rand(2, 3, 32, 32)).shape == (2, 100)


def test_normalize_buffers_and_torchvision_names():
    model = build_model("res18", 10, 3, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    state = model.state_dict()
    assert torch.equal(state["normalize.mean"], torch.tensor([0.1, 0.2, 0.3]))
    assert state["normalize.std"].shape == (3,)
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight", "layer4.1.conv2.weight", "fc.weight"):
        assert key in state
    assert next(iter(state)).startswith("normalize."), "normalize must be the first module"


def test_normalize_is_applied():
    model = build_model("res20s", 10, 1, (0.5,), (0.25,)).eval()
    x = torch.rand(3, 1, 8, 8)
    y = model(x)
    model.normalize.mean.zero_()
    model.normalize.std.fill_(1.0)
    assert torch.allclose(model((x - 0.5) / 0.25), y, atol=1e-5)


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError, match="valid: .*res18"):
        build_model("resnet999", 10)


def test_imagenet_stem_only_when_asked():
    small = build_model("res18", 10, 3)
    large = build_model("res18", 10, 3, imagenet_stem=True)
    assert small.conv1.kernel_size == (3, 3) and large.conv1.kernel_size == (7, 7)
