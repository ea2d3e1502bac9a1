"""What the trainer trains: ``build_model`` (the model ``cfg.model`` names), ``SupOnly`` (Table 4's
heatmap reference), the criterion's ``loss_weights``, the optimiser's ``param_groups`` and
``load_model`` (a model and its config back from a checkpoint)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lofr.config_utils import ConfigError
from lofr.data.schemas import KeypointSchema, get_schema
from lofr.engine.checkpoint import CheckpointError, load_checkpoint
from lofr.engine.config import TrainConfig, lofr_config
from lofr.models.backbone import Backbone
from lofr.models.lofr import LOFR, Baseline, PlainCAM, decode_response_maps
from lofr.models.losses import LossWeights

__all__ = ["SupOnly", "build_model", "loss_weights", "param_groups", "load_model"]


class SupOnly(nn.Module):
    """Table 4's "Sup-only": the backbone + a heatmap head, trained with the heatmap MSE (Eq. 14) on
    the instances that have locations only.

    The paper re-implements SimpleBaseline / HRNet here. Our head (a choice): a small top-down
    pyramid (FPN-like) over the backbone's stride-16, 8 and 4 maps — the stride-16 map is 1x1-projected
    to ``hidden`` channels and refined by a conv3x3-BN-ReLU, upsampled (nearest) to stride 8 and
    added to the 1x1-projected stride-8 map, refined again, and the same once more at stride 4; a
    1x1 conv gives C heatmaps on LOFR's stride-4 grid. It sees the same backbone depth as LOFR (for
    ResNet-50: up to layer3). Measured on cached frozen Lite0 maps at 128x96 (6 epochs, one view):
    OKS AP 0.147 / PCK@0.1 0.646, at 3x the speed of the previous head (the three maps summed at
    stride 4 and one 128-channel conv3x3 there: 0.083 / 0.598).

    forward(images (B, 3, H, W) or the backbone's precomputed maps) -> {"heatmaps": (B, C, H/4, W/4)}
    predict(images) -> {"keypoints" (B, C, 2) input pixels, "scores" (B, C) = heatmap peak in [0, 1]}
    """

    def __init__(self, num_keypoints: int, backbone: str = "resnet50", pretrained: bool = False,
                 hidden: int = 64, schema: str | KeypointSchema | None = None, freeze_to: int = 0):
        super().__init__()
        self.num_keypoints = num_keypoints
        self.schema = get_schema(schema) if schema is not None else None
        self.backbone = Backbone(backbone, pretrained, freeze_to=freeze_to)  # strides 4, 8, 16
        self.strides = [4]
        self.lateral = nn.ModuleList(nn.Conv2d(c, hidden, 1) for c in self.backbone.channels)
        self.refine = nn.ModuleList(
            nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden),
                          nn.ReLU(inplace=True)) for _ in self.backbone.channels)
        self.out = nn.Conv2d(hidden, num_keypoints, 1)
        nn.init.normal_(self.out.weight, std=0.001)  # SimpleBaseline's init of the final layer
        nn.init.zeros_(self.out.bias)

    def forward(self, images) -> dict:
        maps = self.backbone(images)  # [(B, c_s, H/s, W/s)] for s = 4, 8, 16
        x = None
        for lat, ref, m in zip(self.lateral[::-1], self.refine[::-1], maps[::-1]):  # stride 16, then 8, then 4
            y = lat(m)  # (B, hidden, H/s, W/s)
            if x is not None:
                y = y + F.interpolate(x, size=y.shape[-2:], mode="nearest")
            x = ref(y)
        return {"heatmaps": self.out(x)}  # (B, C, H/4, W/4)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, refine: bool = True) -> dict:
        heatmaps = self(images)["heatmaps"]
        keypoints, _ = decode_response_maps(heatmaps, self.strides[0], refine)
        return {"keypoints": keypoints, "scores": heatmaps.amax(dim=(-2, -1)).clamp(0.0, 1.0)}


def build_model(cfg: TrainConfig, num_keypoints: int | None = None) -> nn.Module:
    """The model ``cfg.model`` names, configured by ``cfg.arch`` / ``cfg.data`` / ``cfg.loss``."""
    lcfg = lofr_config(cfg, num_keypoints)
    if cfg.model == "lofr":
        return LOFR(config=lcfg)
    if cfg.model == "baseline":
        return Baseline(config=lcfg)
    if cfg.model == "cam":
        return PlainCAM(config=lcfg)
    if cfg.model == "sup-only":
        return SupOnly(lcfg.num_keypoints, lcfg.backbone, lcfg.pretrained, schema=lcfg.schema,
                       freeze_to=lcfg.freeze_to)
    raise ConfigError(f"model must be 'lofr', 'baseline', 'cam' or 'sup-only', got {cfg.model!r}")


def loss_weights(cfg: TrainConfig, model: nn.Module) -> LossWeights:
    """The criterion's weights: ``cfg.loss`` with the terms of switched-off modules zeroed (Baseline:
    final BCE only); Sup-only: the heatmap MSE alone (weight ``cfg.loss.mse``, 1 when that is 0)."""
    if isinstance(model, SupOnly):
        return LossWeights(cls_cnn=0.0, cls_enc=0.0, cls_final=0.0, div=0.0, aux_dec=0.0, mse=cfg.loss.mse or 1.0)
    return model.config.loss_weights()


def param_groups(model: nn.Module, optim) -> list[dict]:
    """Optimiser groups (paper Sec. 4.2: "the learning rate of transformer is decreased by a factor
    of 10"). "cnn" at ``optim.lr``: the backbone and the CAM head. "transformer" at
    ``optim.lr * optim.transformer_lr_mult``: everything else — the input projections, position /
    level / query embeddings, SPE, the encoder and its classifier, RePPG and the decoder.
    Sup-only is all CNN. Weight decay ``optim.weight_decay`` everywhere: an L2 term inside Adam (the
    paper's, ``optim.optimizer=adam``) or decoupled (``adamw``, ``synth-cpu``'s)."""
    if isinstance(model, SupOnly):
        groups = [{"name": "cnn", "params": [p for p in model.parameters() if p.requires_grad], "lr": optim.lr}]
    else:
        cnn, rest = model.param_groups(optim.lr, optim.transformer_lr_mult, optim.weight_decay)
        groups = [{"name": "cnn", **cnn}, {"name": "transformer", **rest}]
    for g in groups:
        g["weight_decay"] = optim.weight_decay
        g["initial_lr"] = g["lr"]
    return [g for g in groups if g["params"]]


def load_model(path, device: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig]:
    """A model and its TrainConfig from a checkpoint written by :func:`train` (``last.pt`` /
    ``best.pt``), in eval mode. Raises CheckpointError for files that are not such checkpoints."""
    from lofr.engine.config import load_config

    state = load_checkpoint(path, map_location="cpu")
    for key in ("model", "config"):
        if key not in state:
            raise CheckpointError(f"checkpoint {path} has no {key!r}: not written by lofr.engine.train")
    try:
        cfg = load_config(state["config"])
    except ConfigError as e:
        raise ConfigError(f"checkpoint {path} holds a config this version of lofr cannot use: {e}") from None
    cfg.arch = {**cfg.arch, "pretrained": False}  # the weights come from the checkpoint
    model = build_model(cfg, state.get("num_keypoints"))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:  # missing / unexpected keys, shape mismatches
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path}: its weights do not fit the model its config builds "
                              f"(written by another version of lofr?): {first}") from e
    return model.to(device).eval(), cfg
