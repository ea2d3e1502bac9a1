"""CNN backbone (paper Sec. 3.2 / Fig. 2, left): image -> feature maps at strides 4, 8 and 16.

LOFR's multi-scale encoder (Sec. 3.3) reads the backbone at the down-sampling ratios 1/4, 1/8 and
1/16. ``Backbone`` gives exactly those three maps for

* ``"small"``: a tiny conv-BN-ReLU CNN (channels 32/64/128) that trains in minutes on a laptop CPU
  at 64x48 input — for notebooks and tests;
* ``"resnet50"``: timm's ResNet-50, outputs of layer1, layer2, layer3 (256/512/1024 channels);
* ``"hrnet_w32"`` / ``"hrnet_w48"``: timm's HRNet, the raw high-resolution branches of the last
  stage (32/64/128 and 48/96/192 channels), as HRNet-pose uses them. timm's default for HRNet
  features is ``feature_location="incre"`` (extra classification-head blocks widening the
  branches to 128/256/512); we take the plain branches (``feature_location=""``).

Any other timm model name is tried with ``out_indices=(1, 2, 3)``; a model whose features are
not at strides 4/8/16 there raises a ``ValueError``. Weights are only downloaded when
``pretrained=True`` is asked for.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

__all__ = ["Backbone", "SmallCNN", "BACKBONE_STRIDES"]

BACKBONE_STRIDES = (4, 8, 16)

# timm.create_model keyword arguments for the backbones the paper uses (Sec. 4.2, Tables 1-4).
_TIMM_KWARGS = {
    "resnet50": dict(out_indices=(1, 2, 3)),  # layer1, layer2, layer3
    "hrnet_w32": dict(out_indices=(1, 2, 3), feature_location=""),  # stage-4 branches 1..3
    "hrnet_w48": dict(out_indices=(1, 2, 3), feature_location=""),
}


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (no bias) + BatchNorm + ReLU; ``stride=2`` halves H and W."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """A few conv-BN-ReLU stages, each halving the resolution; returns the maps at ``strides``
    (a subset of 4, 8, 16; stages past the largest one are not built).

    (B, 3, H, W) -> [(B, c1, H/4, W/4), (B, c2, H/8, W/8), (B, c3, H/16, W/16)] (all strides)
    """

    def __init__(self, channels: tuple[int, int, int] = (32, 64, 128), stem: int = 16,
                 strides: tuple[int, ...] = BACKBONE_STRIDES):
        super().__init__()
        c1, c2, c3 = channels
        stages = [
            nn.Sequential(conv_bn_relu(3, stem, stride=2), conv_bn_relu(stem, c1, stride=2)),  # /4
            nn.Sequential(conv_bn_relu(c1, c2, stride=2), conv_bn_relu(c2, c2)),  # /8
            nn.Sequential(conv_bn_relu(c2, c3, stride=2), conv_bn_relu(c3, c3)),  # /16
        ]
        last = max(BACKBONE_STRIDES.index(s) for s in strides)
        self.stages = nn.ModuleList(stages[:last + 1])
        self.keep = [BACKBONE_STRIDES.index(s) for s in strides]
        self.channels = [channels[k] for k in self.keep]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)  # (B, c_k, H / 2^(k+2), W / 2^(k+2))
            maps.append(x)
        return [maps[k] for k in self.keep]


class Backbone(nn.Module):
    """Feature pyramid at strides (4, 8, 16) from a small CNN or a timm model.

    Args:
        name: ``"small"``, ``"resnet50"``, ``"hrnet_w32"``, ``"hrnet_w48"`` or another timm model.
        pretrained: load ImageNet weights (downloads; never in tests).
        strides: which maps to return, an increasing subset of (4, 8, 16) — e.g. ``(4,)`` for the
            single-scale baseline (ResNet stages after the last one asked for are not built).

    Attributes:
        channels: the maps' channel counts, e.g. ``[256, 512, 1024]`` for ResNet-50.
        strides: the maps' strides, ``(4, 8, 16)`` by default.

    forward: (B, 3, H, W) -> [(B, c1, H/4, W/4), (B, c2, H/8, W/8), (B, c3, H/16, W/16)]
    (H and W should be multiples of 16, e.g. 256x192 or 64x48; others are floored per stage.)
    """

    def __init__(self, name: str = "resnet50", pretrained: bool = False,
                 strides: tuple[int, ...] = BACKBONE_STRIDES):
        super().__init__()
        strides = tuple(strides)
        if not strides or any(s not in BACKBONE_STRIDES for s in strides) or list(strides) != sorted(set(strides)):
            raise ValueError(f"Backbone strides must be an increasing subset of {BACKBONE_STRIDES}, got {strides}")
        self.name = name
        self.strides = strides
        if name == "small":
            if pretrained:
                raise ValueError("Backbone('small') has no pretrained weights; use pretrained=False")
            self.body = SmallCNN(strides=strides)
            self.channels = list(self.body.channels)
            return
        kwargs = dict(_TIMM_KWARGS.get(name, dict(out_indices=(1, 2, 3))))
        kwargs["out_indices"] = tuple(kwargs["out_indices"][BACKBONE_STRIDES.index(s)] for s in strides)
        try:
            self.body = timm.create_model(name, pretrained=pretrained, features_only=True, **kwargs)
        except RuntimeError as e:  # timm raises RuntimeError for unknown names
            raise ValueError(f"Backbone: cannot build timm model {name!r}: {e}") from e
        reduction = tuple(self.body.feature_info.reduction())
        if reduction != strides:
            raise ValueError(f"Backbone {name!r}: out_indices {kwargs['out_indices']} give strides "
                             f"{reduction}, LOFR needs {strides}")
        self.channels = list(self.body.feature_info.channels())

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Backbone expects images (B, 3, H, W), got {tuple(images.shape)}")
        return list(self.body(images))  # one map per stride in self.strides
