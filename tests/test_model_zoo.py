"""The model zoo: every registered model trains at 28/32/224 px, keeps the features/head
contract, runs channels_last, and the full-size constructors have the published sizes."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unlearnable.errors import UnlearnableError
from unlearnable.models import build_model, model_names
from unlearnable.runtime import prepare_model, to_model_input

# Small variants (same code paths and depth where cheap, tiny widths) for the forward/backward tests.
TINY_VIT = {"dim": 32, "depth": 2, "heads": 2}
ZOO = {
    "linear": {}, "2-nn": {"width": 16}, "3-nn": {"width": 16}, "lenet-5": {},
    "cnn": {"width": 4}, "cnn-small": {"width": 4}, "vgg-11": {"width": 4},
    "resnet-18": {"width": 4}, "resnet-34": {"width": 4}, "resnet-50": {"width": 4},
    "resnet-101": {"width": 2}, "resnet-152": {"width": 2},
    "densenet-121": {"growth": 4}, "wrn-34-10": {"widen": 1}, "wrn-28-10": {"widen": 1},
    "vit-b": TINY_VIT, "vit-l": TINY_VIT, "vit-h": TINY_VIT,
}
SIZES = [(1, 28), (3, 32), (3, 224)]
PAPER_NAMES = ["linear", "2-nn", "3-nn", "lenet-5", "vgg-11", "resnet-18", "resnet-34", "resnet-50", "resnet-101",
               "resnet-152", "densenet-121", "wrn-34-10", "vit-b", "vit-l", "vit-h"]


def tiny(name, channels, size, classes=10):
    torch.manual_seed(0)
    return build_model(name, channels, classes, size, **ZOO[name])


def test_zoo_lists_every_paper_model():
    assert set(PAPER_NAMES) <= set(ZOO) <= set(model_names())


@pytest.mark.parametrize("channels,size", SIZES)
@pytest.mark.parametrize("name", sorted(ZOO))
def test_training_step_and_feature_contract(name, channels, size):
    model = tiny(name, channels, size).train()
    x, y = torch.rand(4, channels, size, size), torch.tensor([0, 1, 2, 3])
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    for pname, p in model.named_parameters():  # every parameter is used and gets a finite gradient
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():  # a plain SGD step (torch.optim's first use costs seconds of imports)
        for p in model.parameters():
            p -= 0.1 * p.grad
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())

    model.eval()
    with torch.no_grad():
        z = model.features(x)
        assert z.shape == (4, model.feature_dim)
        assert torch.allclose(model.head(z), model(x), atol=1e-6)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_channels_last_matches_contiguous(name):
    model = tiny(name, 3, 32).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        fast = prepare_model(copy.deepcopy(model), torch.device("cpu"), channels_last=True)
        out = fast(to_model_input(x, True))
    assert torch.allclose(out, reference, atol=1e-5)


def has_imagenet_stem(model):
    return any(isinstance(m, nn.Conv2d) and m.kernel_size == (7, 7) and m.stride == (2, 2) for m in model.modules())


@pytest.mark.parametrize("name", ["resnet-18", "densenet-121", "wrn-34-10"])
def test_stems_follow_the_input_size(name):
    assert not has_imagenet_stem(tiny(name, 1, 28)) and not has_imagenet_stem(tiny(name, 3, 32))
    assert has_imagenet_stem(tiny(name, 3, 224))


@pytest.mark.parametrize("size,tokens", [(28, 7 * 7 + 1), (32, 8 * 8 + 1), (224, 14 * 14 + 1)])
def test_vit_patch_size_follows_the_paper(size, tokens):
    # Patch 4 at CIFAR sizes (MI-UE Appendix E.2), 16 at 224 px (ViT-B/16); one extra class token.
    assert tiny("vit-b", 3, size).pos_embed.shape[1] == tokens
    assert build_model("vit-b", 3, 10, 32, patch=8, **TINY_VIT).pos_embed.shape[1] == 17


def on_meta(name, classes, size, **kw):
    # On the meta device: no memory is allocated and no initialisation runs, so ViT-H costs nothing.
    with torch.device("meta"):
        return build_model(name, 3, classes, size, **kw)


def count(name, classes, size, **kw):
    return sum(p.numel() for p in on_meta(name, classes, size, **kw).parameters())


@pytest.mark.parametrize("name,classes,size,kw,published", [
    # torchvision model docs (num_params of the ImageNet builders): resnet18 11,689,512, resnet50 25,557,032,
    # densenet121 7,978,856, vit_b_16 86,567,656, vit_l_16 304,326,632, vit_h_14 632,045,800 (ViT paper,
    # Dosovitskiy et al. 2021, Table 1: 86M / 307M / 632M).
    ("resnet-18", 1000, 224, {}, 11_689_512),
    ("resnet-50", 1000, 224, {}, 25_557_032),
    ("densenet-121", 1000, 224, {}, 7_978_856),
    ("vit-b", 1000, 224, {}, 86_567_656),
    ("vit-l", 1000, 224, {}, 304_326_632),
    ("vit-h", 1000, 224, {"patch": 14}, 632_045_800),
    # CIFAR-10 DenseNet-121 (k = 32, 3x3 stem): 6,956,298 in the pytorch-cifar family of model tables
    # (6.96M in the DA2Lite model zoo README).
    ("densenet-121", 10, 32, {}, 6_956_298),
    # Li et al., "Towards Practical Lottery Ticket Hypothesis for Adversarial Training" (arXiv:1910.04311),
    # Table 4: WRN-34-10 46,160,474, WRN-28-10 36,479,194 (WRN paper: 36.5M), WRN-34-1 466,714.
    ("wrn-34-10", 10, 32, {}, 46_160_474),
    ("wrn-28-10", 10, 32, {}, 36_479_194),
    ("wrn-34-10", 10, 32, {"widen": 1}, 466_714),
    # NeuralFuse (Sun et al., NeurIPS 2024), Table 7: CIFAR-10 VGG11 9,231,114, counted with conv biases;
    # ours has none before BatchNorm (64 + 128 + 2 * 256 + 4 * 512 = 2,752 fewer).
    ("vgg-11", 10, 32, {}, 9_231_114 - 2_752),
])
def test_full_size_parameter_counts_match_published(name, classes, size, kw, published):
    assert count(name, classes, size, **kw) == published


def test_mlp_sizes():
    # Our definitions (the paper gives no widths): pixels -> [512 ->] ... -> classes.
    d = 3 * 32 * 32
    assert count("linear", 10, 32) == d * 10 + 10
    assert count("2-nn", 10, 32) == d * 512 + 512 + 512 * 10 + 10
    assert count("3-nn", 10, 32) == d * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
    assert build_model("linear", 1, 10, 28).feature_dim == 784  # the linear model's g is the identity


@pytest.mark.parametrize("name,alias", [
    ("ViT-B", "vit-base"), ("ViT-L", "vit-large"), ("ViT-H", "vit-huge"), ("WRN34-10", "wrn-34-10"),
    ("DenseNet-121", "densenet121"), ("VGG-11", "vgg11"), ("2-NN", "2nn"), ("3-NN", "3nn"), ("Linear", "LINEAR"),
])
def test_names_are_case_insensitive(name, alias):
    a, b = on_meta(name, 10, 32), on_meta(alias, 10, 32)
    assert type(a) is type(b) and count(name, 10, 32) == count(alias, 10, 32)


@pytest.mark.parametrize("name,size,kw,match", [
    ("vit-b", 30, TINY_VIT, "multiple of the patch"),
    ("vit-b", 32, {"dim": 30, "depth": 1, "heads": 4}, "multiple of heads"),
    ("wrn-34-10", 32, {"depth": 33}, "depth"),
    ("densenet-121", 32, {"blocks": ()}, "blocks"),
    ("2-nn", 32, {"width": 0}, "width"),
])
def test_bad_sizes_are_clear_errors(name, size, kw, match):
    with pytest.raises(UnlearnableError, match=match):
        build_model(name, 3, 10, size, **kw)
