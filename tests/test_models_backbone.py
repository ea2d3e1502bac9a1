import pytest
import torch

from lofr.models.backbone import Backbone, SmallCNN


def test_small_backbone_shapes_and_strides():
    torch.manual_seed(0)
    net = Backbone("small")
    maps = net(torch.randn(2, 3, 64, 48))
    assert net.strides == (4, 8, 16)
    assert net.channels == [32, 64, 128]
    assert [tuple(m.shape) for m in maps] == [(2, 32, 16, 12), (2, 64, 8, 6), (2, 128, 4, 3)]


@pytest.mark.parametrize("strides,channels", [((4,), [32]), ((4, 16), [32, 128]), ((16,), [128])])
def test_small_backbone_stride_subsets(strides, channels):
    net = Backbone("small", strides=strides)
    maps = net(torch.randn(1, 3, 64, 48))
    assert net.channels == channels
    assert [m.shape[-1] for m in maps] == [48 // s for s in strides]
    if strides == (4,):  # stages past stride 4 are not built
        assert len(net.body.stages) == 1


def test_small_backbone_gradients_reach_every_parameter():
    net = SmallCNN()
    sum(m.square().mean() for m in net(torch.randn(2, 3, 32, 32))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize("strides", [(), (8, 4), (2, 4), (4, 4)])
def test_bad_strides_raise(strides):
    with pytest.raises(ValueError, match="strides"):
        Backbone("small", strides=strides)


def test_bad_input_and_names_raise():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        Backbone("small")(torch.randn(1, 1, 64, 48))
    with pytest.raises(ValueError, match="pretrained"):
        Backbone("small", pretrained=True)
    with pytest.raises(ValueError, match="no_such_net"):
        Backbone("no_such_net")


@pytest.mark.parametrize("name,channels", [("resnet50", [256, 512, 1024]), ("hrnet_w32", [32, 64, 128])])
def test_timm_backbones_at_256x192(name, channels):
    net = Backbone(name, pretrained=False).eval()
    assert net.channels == channels
    with torch.no_grad():
        maps = net(torch.randn(1, 3, 256, 192))
    assert [tuple(m.shape) for m in maps] == [(1, c, 256 // s, 192 // s) for c, s in zip(channels, (4, 8, 16))]


def test_resnet50_truncated_for_single_scale():
    # only layer1 is needed for stride 4: far fewer parameters than up to layer3
    small = Backbone("resnet50", strides=(4,))
    assert small.channels == [256]
    assert sum(p.numel() for p in small.parameters()) < 300_000
