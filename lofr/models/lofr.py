"""LOFR assembled (paper Fig. 2), its configuration, and the paper's DETR-style baseline.

    images (B, 3, H, W)
      -> Backbone                      feature maps at strides 4, 8, 16            (Sec. 3.2)
      -> CAMHead on the stride-16 map  logits_cnn, CAMs M (Eq. 1), F_c (Eq. 2)     (Sec. 3.2)
      -> 1x1 conv + GroupNorm per scale to d_model channels
      -> SPE per scale: F' = ψ(φ ⊕ F), φ = F ⊗ F^key  (Eq. 3-4)                   (Sec. 3.3)
      -> MSC-En: per-scale self-attention (Eq. 5-9), concat -> memory F_m          (Sec. 3.3)
      -> RePPG: F_c -> pose prototypes P'_C (Eq. 10)                               (Sec. 3.4)
      -> RGP-De: prototypes cross-attend F_m -> response maps R, part features F^p, logits

Choices the paper leaves open (tested in ``tests/test_models_*.py``):

* the CAM head reads the deepest (stride-16) map, the most semantic one; its CAMs are 4x coarser
  than the finest encoder scale and SPE renders their peaks at every scale;
* position encodings: every scale gets a base encoding (sine by default, ``position="learned"``
  for DETR's random-initialised one) plus, with several scales, a learned per-scale embedding (as
  in Deformable DETR, so that the decoder can tell the scales apart in the concatenated memory).
  With SPE, φ is added on top: pos_s = base_s + level_s + φ_s, used on queries/keys in every
  encoder layer and as the memory's position in the decoder. (The paper: SPE "rather than" a
  random position embedding; we keep the base so that attention still knows where cells are
  away from the keypoint blobs, where φ = 0.)
* single scale (``multi_scale=False``, and the baseline) uses the stride-4 map by default
  (``single_scale_stride``), so that the response maps have the same resolution as LOFR's (DETR
  itself uses its backbone's last map, stride 32). The price: the baseline's CNN is then only the
  part of the backbone up to stride 4 (for ResNet-50: stem + layer1, 0.2 M of its 8.5 M
  parameters up to layer3); ``single_scale_stride=16`` gives the DETR-like alternative (deep
  features, 4x coarser response maps);
* encoder logits (L_cls_en in Eq. 13): a linear layer on the average of the per-scale mean
  memory tokens (``enc_head``; off in the baseline);
* queries: with RePPG the decoder's initial queries are P'_C; without it they are zeros (DETR).
  Both add a learned per-keypoint query embedding (DETR's query_pos) in every decoder layer;
* heatmaps: the fused (stride-4) response map of each keypoint divided by its own maximum (peak 1,
  for display; no extra head). Eq. 14 does NOT compare these: it scales the fused response by the
  Gaussian target's mass (``losses.mass_matched_heatmaps``), which a collapsed spike cannot satisfy;
* predict(): the arg-max of the fused response map, refined within the cell by a second-order
  Taylor expansion of its log (DARK; a quarter cell towards the higher neighbour, as SimpleBaseline /
  HRNet, where that does not apply: ``decode_response_maps``); score = p_c * (1 - 1 / (N max R_c)), with p_c the
  final presence probability, R_c the fused map (summing to 1 over its N cells): the second
  factor is 0 for a flat (uniform) map and approaches 1 as the response concentrates on one cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from einops import rearrange
from torch import nn

from lofr.data.schemas import KeypointSchema, get_schema
from lofr.models.backbone import BACKBONE_STRIDES, Backbone
from lofr.models.cam import CAMHead
from lofr.models.decoder import PoseDecoder
from lofr.models.encoder import MultiScaleEncoder
from lofr.models.losses import LossWeights
from lofr.models.position import LearnedPositionEncoding, SinePositionEncoding
from lofr.models.reppg import RePPG
from lofr.models.spe import SPE, keypoint_location_maps

__all__ = ["LOFRConfig", "LOFR", "Baseline", "PlainCAM", "decode_response_maps", "normalise_cams",
           "location_prior_bias"]

_SCHEMA_BY_C = {17: "coco", 16: "mpii", 14: "crowdpose"}


def location_prior_bias(mean: torch.Tensor, std: torch.Tensor, shapes, strides) -> torch.Tensor:
    """log N(p; mu_c, diag sigma_c^2) up to its constant, -1/2 sum_axes ((p - mu_c) / sigma_c)^2, for every
    keypoint c and every memory token p: (C, L), the scales concatenated in ``shapes`` order as the
    decoder's memory (a token's p = its cell centre ((j + 1/2) s, (i + 1/2) s) in input pixels).
    mean / std (C, 2) (x, y) in input pixels. ``LOFRConfig.dec_prior_bias``: not in the paper."""
    centres = []
    for (h, w), s in zip(shapes, strides):
        ys, xs = torch.meshgrid((torch.arange(h, device=mean.device) + 0.5) * s,
                                (torch.arange(w, device=mean.device) + 0.5) * s, indexing="ij")
        centres.append(rearrange(torch.stack([xs, ys], -1), "h w two -> (h w) two"))  # (h*w, 2)
    p = torch.cat(centres).to(mean.dtype)  # (L, 2)
    z = (p[None] - mean[:, None]) / std[:, None]  # (C, L, 2)
    return -0.5 * z.pow(2).sum(-1)  # (C, L)


@dataclass
class LOFRConfig:
    """Everything that shapes a LOFR model. Defaults = the paper's COCO recipe (Sec. 4.2, Table 6):
    ResNet-50, 256x192, d = 256, 8 heads, D_En = 4, D_De = 6, every module on.

    The switches give the Table 5 ablations: ``use_spe`` (SPE), ``multi_scale`` (MS),
    ``use_reppg`` (RePPG), ``use_pdc`` (β > 0); all off + ``cam_head=False`` is the baseline.

    ``dec_value`` (not in the paper; "memory" = the paper / DETR): the values of the decoder's
    cross-attention. "local" = the encoder's INPUT tokens (the projected CNN features, after SPE)
    instead of its output: keys and queries still see the encoder's global context, but what a
    keypoint query pools (its part feature and hence its presence logit) is only what lies under
    its attention. With "memory" self-attention can spread "a wrist is present" over every token,
    and the classification loss no longer needs the response to sit on the wrist.

    ``dec_key_bias`` (not in the paper; off = the paper): add gamma * log(F^key_c + 1e-3) to keypoint
    c's cross-attention logits in every decoder layer (gamma learned, starting at 1; F^key = SPE's CAM
    location maps, Eq. 3's input, 0 away from the CAM peak and for joints the CNN calls absent). The
    response maps then start at the CAM peaks and the decoder refines them, instead of having to find
    the joints again from a flat start; ``dec_logits`` ("query" = the paper, "part" = presence from
    the attention-pooled values) is documented in decoder.py, ``cam_pool`` in cam.py.

    ``dec_prior_bias`` (not in the paper; off = the paper): add gamma * log N(p; mu_c, diag sigma_c^2) (up to
    its constant) to keypoint c's cross-attention logit at every memory token p (its cell centre in input
    pixels), in every decoder layer; gamma learned, starting at 1. mu_c / sigma_c are the mean and per-axis std
    of joint c's position in the training crops (buffers, fitted by the trainer with
    :meth:`LOFR.set_location_prior` from the training locations *without their images* — the information
    the mean-pose prior uses; :func:`location_prior_bias`). The maps start at the mean pose, and the weak
    losses can only move them where the image says so: "does the image-level signal add to the prior?"
    asked inside the model.

    ``ms_strides`` (the paper: 4, 8, 16): the backbone maps the multi-scale encoder reads. On a CPU
    at 128x96 the stride-4 self-attention (768 tokens) costs 5x everything else; ``synth-cpu`` reads
    strides 8 and 16 (the response maps then live on the stride-8 grid, 16x12).

    ``cam_stride`` (the paper: the CNN's last map, 16 here): which backbone map the CAM head reads.
    8 gives twice finer CAMs (and SPE key maps) from a shallower, smaller-receptive-field map; at
    64x48 input stride 16 is a 4x3 grid.
    """

    backbone: str = "resnet50"
    pretrained: bool = False  # ImageNet weights for the backbone (efficientnet_lite0: offline; others download)
    freeze_to: int = 0  # backbone frozen up to the map at this stride (0: trains; 16: all; 8: Lite0's stem..s8)
    num_keypoints: int = 17
    schema: str | None = None  # "coco" / "mpii" / "crowdpose"; None: chosen from num_keypoints
    input_size: tuple[int, int] = (256, 192)  # (H, W)
    d_model: int = 256
    nhead: int = 8
    enc_layers: int = 4
    dec_layers: int = 6
    dim_ff: int = 2048  # DETR's (the paper's Transformer baseline); not given in the paper
    dropout: float = 0.0
    cam_head: bool = True
    enc_head: bool = True  # encoder logits for L_cls_en
    use_spe: bool = True
    multi_scale: bool = True
    use_reppg: bool = True
    use_pdc: bool = True
    single_scale_stride: int = 4  # the encoder's map when multi_scale=False (4, 8 or 16)
    ms_strides: tuple[int, ...] = (4, 8, 16)  # the encoder's maps when multi_scale=True (the paper: 4, 8, 16)
    position: Literal["sine", "learned"] = "sine"
    spe_mode: Literal["product", "embed"] = "product"
    spe_sigma: float | None = None  # F^key Gaussian sigma in input pixels; None: half a CAM cell
    proto_weighting: Literal["softmax", "mean", "sum"] = "softmax"  # Eq. 2 (see cam.py)
    reppg_layers: int = 2
    dec_self_attn: bool = True
    dec_value: Literal["memory", "local"] = "memory"  # what the decoder's cross-attention reads
    cam_stride: int = 16  # the backbone map the CAM head reads (4, 8 or 16)
    dec_key_bias: bool = False  # add gamma * log(F^key_c + eps) to query c's cross-attention logits
    dec_prior_bias: bool = False  # add gamma * log N(p; mu_c, sigma_c) (the training poses' spread) to them
    dec_logits: Literal["query", "part"] = "query"  # what the decoder's classifier reads (decoder.py)
    cam_pool: Literal["gap", "lse", "lmp", "peak"] = "gap"  # the CAM head's pooling (the paper: GAP; see cam.py)
    cam_lse_r: float = 5.0  # its sharpness with cam_pool="lse"
    cam_lmp_eps: float = 0.01  # the leak of cam_pool="lmp" (LMPNet's leaky max pooling)
    loss: LossWeights = field(default_factory=LossWeights)

    @classmethod
    def coco_r50(cls, **overrides) -> "LOFRConfig":
        """The paper's main COCO setting: ResNet-50, 256x192 (Table 1)."""
        return cls(**overrides)

    @classmethod
    def coco_hrnet_w32(cls, **overrides) -> "LOFRConfig":
        return cls(**{"backbone": "hrnet_w32", **overrides})

    @classmethod
    def mpii_r50(cls, **overrides) -> "LOFRConfig":
        return cls(**{"num_keypoints": 16, "schema": "mpii", "input_size": (256, 256), **overrides})

    @classmethod
    def crowdpose_r50(cls, **overrides) -> "LOFRConfig":
        return cls(**{"num_keypoints": 14, "schema": "crowdpose", **overrides})

    @classmethod
    def cpu_small(cls, **overrides) -> "LOFRConfig":
        """A model that trains on a laptop CPU: small CNN, 64x48 input, d = 64, 1 encoder layer per
        scale, 2 decoder layers."""
        small = dict(backbone="small", input_size=(64, 48), d_model=64, nhead=4, enc_layers=1,
                     dec_layers=2, dim_ff=128, reppg_layers=1)
        return cls(**{**small, **overrides})

    def as_baseline(self) -> "LOFRConfig":
        """The paper's baseline: CNN + DETR encoder/decoder, single scale, no CAM head / SPE /
        RePPG / PDC, only the final BCE; the decoder reads the encoder's memory (DETR's values, whatever
        ``dec_value`` the LOFR config chose)."""
        loss = replace(self.loss, cls_cnn=0.0, cls_enc=0.0, div=0.0)
        return replace(self, cam_head=False, enc_head=False, use_spe=False, multi_scale=False, use_reppg=False,
                       use_pdc=False, dec_value="memory", dec_key_bias=False, dec_prior_bias=False, loss=loss)

    def loss_weights(self) -> LossWeights:
        """``loss`` with the terms of switched-off modules zeroed (no CNN logits without the CAM
        head, no L_div without PDC)."""
        w = self.loss
        if not self.cam_head:
            w = replace(w, cls_cnn=0.0)
        if not self.enc_head:
            w = replace(w, cls_enc=0.0)
        if not self.use_pdc:
            w = replace(w, div=0.0)
        return w

    def check(self) -> None:
        if not self.cam_head and (self.use_spe or self.use_reppg):
            raise ValueError("LOFRConfig: use_spe and use_reppg need the CAM head (cam_head=True)")
        if self.dec_key_bias and not self.use_spe:
            raise ValueError("LOFRConfig: dec_key_bias needs use_spe=True (it biases the decoder with SPE's "
                             "location maps F^key, Eq. 3, which only exist with SPE)")
        if self.dec_value not in ("memory", "local"):
            raise ValueError(f"LOFRConfig: dec_value must be 'memory' or 'local', got {self.dec_value!r}")
        if self.cam_pool not in ("gap", "lse", "lmp", "peak"):
            raise ValueError(f"LOFRConfig: cam_pool must be 'gap', 'lse', 'lmp' or 'peak', got {self.cam_pool!r}")
        if self.d_model % self.nhead:
            raise ValueError(f"LOFRConfig: d_model {self.d_model} not divisible by nhead {self.nhead}")
        if self.cam_stride not in BACKBONE_STRIDES:
            raise ValueError(f"LOFRConfig: cam_stride must be one of {BACKBONE_STRIDES}, got {self.cam_stride}")
        ms = tuple(self.ms_strides)
        if len(ms) < 2 or any(s not in BACKBONE_STRIDES for s in ms) or list(ms) != sorted(set(ms)):
            raise ValueError(f"LOFRConfig: ms_strides must be an increasing subset of {BACKBONE_STRIDES} with at least "
                             f"two strides, got {list(ms)}")
        if self.single_scale_stride not in BACKBONE_STRIDES:
            raise ValueError(f"LOFRConfig: single_scale_stride must be one of {BACKBONE_STRIDES}, "
                             f"got {self.single_scale_stride}")
        h, w = self.input_size
        if h % 16 or w % 16:
            raise ValueError(f"LOFRConfig: input_size {self.input_size} must be multiples of 16")


def _resolve_schema(num_keypoints: int, schema) -> KeypointSchema | None:
    if schema is None:
        if num_keypoints not in _SCHEMA_BY_C:
            return None
        schema = _SCHEMA_BY_C[num_keypoints]
    schema = get_schema(schema)
    if schema.num_keypoints != num_keypoints:
        raise ValueError(f"schema {schema.name!r} has {schema.num_keypoints} keypoints, "
                         f"the model {num_keypoints}")
    return schema


def decode_response_maps(maps: torch.Tensor, stride: int, refine: bool | str = True):
    """Response maps -> keypoints in input-pixel crop coordinates, and their peak concentration.

    maps (B, C, h, w), each map summing to 1 (e.g. the fused response map) or heatmaps.
    -> keypoints (B, C, 2) as (x, y): the arg-max cell (i, j) maps to ((j + 0.5) s, (i + 0.5) s)
       (lofr/data/transforms.py), refined within the cell when ``refine``:
       * ``"taylor"`` (``True``; DARK's, Zhang et al. 2020): a second-order Taylor expansion of
         log(map) at the peak, offset = -H^-1 grad (finite differences over the 3x3 neighbourhood),
         clamped to half a cell. Exact for a sampled Gaussian. Where it does not apply (a peak on the
         map's border, or log(map) not curved downwards there) it falls back to ``"quarter"``;
       * ``"quarter"`` (SimpleBaseline / HRNet): a quarter cell towards the higher of the two
         neighbours along x and along y, when both exist and differ;
       concentration (B, C) = 1 - 1 / (h w max R) clamped to [0, 1]: 0 for a uniform map.
    On Sup-only heatmaps of the Lite0 testbed (128x96, stride 4) "taylor" gave OKS AP 0.307, "quarter"
    0.291, none 0.252 (same model, same crops).
    """
    if refine is True:
        refine = "taylor"
    if refine not in (False, None, "quarter", "taylor"):
        raise ValueError(f"refine must be True / 'taylor', 'quarter' or False, got {refine!r}")
    b, c, h, w = maps.shape
    flat = rearrange(maps, "b c h w -> b c (h w)")
    peak, idx = flat.max(dim=-1)  # (B, C)
    i, j = torch.div(idx, w, rounding_mode="floor"), idx % w
    x, y = j.float() + 0.5, i.float() + 0.5
    if refine:
        padded = nn.functional.pad(maps.float(), (1, 1, 1, 1), value=float("-inf"))  # (B, C, h+2, w+2)
        bi = torch.arange(b, device=maps.device)[:, None]
        ci = torch.arange(c, device=maps.device)[None, :]

        def at(di, dj):  # the map at (i + di, j + dj), -inf outside it; (B, C)
            return padded[bi, ci, i + 1 + di, j + 1 + dj]

        left, right, up, down = at(0, -1), at(0, 1), at(-1, 0), at(1, 0)
        in_x, in_y = torch.isfinite(left) & torch.isfinite(right), torch.isfinite(up) & torch.isfinite(down)
        # only when both neighbours exist (inside the map) and differ
        qx = 0.25 * torch.where(in_x, torch.sign(right - left), 0.0)
        qy = 0.25 * torch.where(in_y, torch.sign(down - up), 0.0)
        if refine == "taylor":
            lg = lambda v: torch.log(v.clamp_min(1e-10))  # noqa: E731
            c0 = lg(at(0, 0))
            dx, dy = 0.5 * (lg(right) - lg(left)), 0.5 * (lg(down) - lg(up))
            dxx, dyy = lg(right) - 2 * c0 + lg(left), lg(down) - 2 * c0 + lg(up)
            dxy = 0.25 * (lg(at(1, 1)) - lg(at(1, -1)) - lg(at(-1, 1)) + lg(at(-1, -1)))
            det = dxx * dyy - dxy ** 2
            ok = in_x & in_y & (dxx < 0) & (det > 1e-12)  # interior peak, log(map) concave there
            safe = torch.where(ok, det, torch.ones_like(det))
            tx = (-(dyy * dx - dxy * dy) / safe).clamp(-0.5, 0.5)
            ty = (-(dxx * dy - dxy * dx) / safe).clamp(-0.5, 0.5)
            qx, qy = torch.where(ok, tx, qx), torch.where(ok, ty, qy)
        x, y = x + qx, y + qy
    keypoints = torch.stack([x, y], dim=-1) * stride  # (B, C, 2)
    concentration = (1 - 1 / (h * w * peak).clamp_min(1e-12)).clamp(0.0, 1.0)  # (B, C)
    return keypoints, concentration


def normalise_cams(cams: torch.Tensor) -> torch.Tensor:
    """CAMs (B, C, h, w), >= 0 (Eq. 1) -> maps summing to 1 over (h, w), so that they decode and
    flip-average like response maps. A CAM that is 0 everywhere (ReLU of a negative map) becomes
    uniform: its arg-max is then the first cell and its concentration 0."""
    mass = cams.sum(dim=(-2, -1), keepdim=True)  # (B, C, 1, 1)
    uniform = torch.full_like(cams, 1.0 / (cams.shape[-2] * cams.shape[-1]))
    return torch.where(mass > 0, cams / mass.clamp_min(torch.finfo(cams.dtype).tiny), uniform)


class LOFR(nn.Module):
    """Location-free pose estimator (paper Fig. 2). See the module docstring for the data flow.

    Args:
        num_keypoints: C; default: ``config.num_keypoints`` (17).
        config: a :class:`LOFRConfig` (default ``LOFRConfig.coco_r50()``).
        schema: KeypointSchema or name, for RePPG's graph; default: ``config.schema``, else the
            schema with C keypoints (COCO 17, MPII 16, CrowdPose 14).

    forward(images (B, 3, H, W), query_point=None) -> dict  (``images`` may also be the list of the
    backbone's maps, precomputed by a frozen backbone: ``lofr.engine.feature_cache``):
        logits_cnn (B, C) | None     CAM-head logits (L_cls_cnn)
        logits_enc (B, C) | None     encoder logits (L_cls_en)
        logits (B, C)                final decoder logits (L_cls_tran)
        logits_per_layer (D_De, B, C)
        cams (B, C, h16, w16) | None CAMs M (Eq. 1);   key_maps [(B, C, h_s, w_s)] | None  F^key
        protos (B, C, d) | None      F_c (Eq. 2);       prototypes (B, C, d)  decoder input queries
        response_maps [(B, C, h_s, w_s)] per scale;  response_fused (B, C, H/s0, W/s0), sums to 1
        heatmaps (B, C, H/s0, W/s0)  response_fused / its max (peak 1, for display); s0 = strides[0]
        part_feats (B, C, d)         F^p (Eq. 11)
        dec_attn (D_De, B, C, L)     every decoder layer's cross-attention (head mean)
        enc_attn None | [(B, D_En, h_s, w_s)]  encoder self-attention of the cell at ``query_point``
        shapes [(h_s, w_s)], strides [s]
    """

    def __init__(self, num_keypoints: int | None = None, config: LOFRConfig | None = None, schema=None):
        super().__init__()
        cfg = LOFRConfig.coco_r50() if config is None else config
        if num_keypoints is not None and num_keypoints != cfg.num_keypoints:
            cfg = replace(cfg, num_keypoints=num_keypoints)
        cfg.check()
        self.config = cfg
        c, d = cfg.num_keypoints, cfg.d_model
        self.num_keypoints = c
        self.schema = _resolve_schema(c, schema if schema is not None else cfg.schema)
        if cfg.use_reppg and self.schema is None:
            raise ValueError(f"RePPG needs a keypoint schema for C={c}; pass schema=")

        self.strides = list(cfg.ms_strides) if cfg.multi_scale else [cfg.single_scale_stride]  # encoder's
        self.cam_stride = cfg.cam_stride  # the map the CAM head reads (default the deepest, 16)
        needed = sorted(set(self.strides) | ({self.cam_stride} if cfg.cam_head else set()))
        self.backbone = Backbone(cfg.backbone, cfg.pretrained, strides=tuple(needed), freeze_to=cfg.freeze_to)
        channels = dict(zip(self.backbone.strides, self.backbone.channels))
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels[s], d, 1), nn.GroupNorm(math.gcd(32, d), d)) for s in self.strides)
        self.cam_head = CAMHead(channels[self.cam_stride], c, d, cfg.proto_weighting,
                                cfg.cam_pool, cfg.cam_lse_r, cfg.cam_lmp_eps) if cfg.cam_head else None

        if cfg.position == "sine":
            self.pos_embed = SinePositionEncoding(d)
        else:
            h, w = cfg.input_size
            self.pos_embed = LearnedPositionEncoding(d, (math.ceil(h / 4), math.ceil(w / 4)))
        n = len(self.strides)
        self.level_embed = nn.Parameter(torch.randn(n, d) * 0.02) if n > 1 else None
        self.spe = nn.ModuleList(SPE(d, c, cfg.spe_mode) for _ in range(n)) if cfg.use_spe else None

        self.encoder = MultiScaleEncoder(d, cfg.nhead, cfg.enc_layers, cfg.dim_ff, cfg.dropout, num_scales=n)
        self.enc_classifier = nn.Linear(d, c) if cfg.enc_head else None
        self.reppg = RePPG(self.schema, d, cfg.reppg_layers) if cfg.use_reppg else None
        self.query_embed = nn.Parameter(torch.randn(c, d) * 0.02)  # DETR's query_pos
        self.key_bias_scale = nn.Parameter(torch.ones(())) if cfg.dec_key_bias else None
        self.prior_bias_scale = None
        if cfg.dec_prior_bias:  # until set_location_prior: every joint at the crop centre, spread a quarter crop
            h, w = cfg.input_size
            self.prior_bias_scale = nn.Parameter(torch.ones(()))
            self.register_buffer("prior_mean", torch.tensor([[w / 2, h / 2]]).repeat(c, 1))  # (C, 2) (x, y)
            self.register_buffer("prior_std", torch.tensor([[w / 4, h / 4]]).repeat(c, 1))  # (C, 2)
        self.decoder = PoseDecoder(d, cfg.nhead, cfg.dec_layers, cfg.dim_ff, cfg.dropout,
                                   self_attn=cfg.dec_self_attn, num_keypoints=c, logits_from=cfg.dec_logits)

    def forward(self, images: torch.Tensor, query_point: tuple[float, float] | None = None) -> dict:
        cfg = self.config
        feats = dict(zip(self.backbone.strides, self.backbone(images)))  # stride -> (B, c_s, H/s, W/s)
        b, device = feats[self.backbone.strides[0]].shape[0], feats[self.backbone.strides[0]].device
        cam = self.cam_head(feats[self.cam_stride]) if self.cam_head is not None else None

        srcs = [proj(feats[s]) for proj, s in zip(self.input_proj, self.strides)]  # [(B, d, h_s, w_s)]
        shapes = [tuple(x.shape[-2:]) for x in srcs]
        pos = [self.pos_embed(h, w, device=device)[None] for h, w in shapes]  # [(1, d, h_s, w_s)]
        if self.level_embed is not None:
            pos = [p + lvl[None, :, None, None] for p, lvl in zip(pos, self.level_embed)]
        key_maps = None
        if self.spe is not None:
            presence = cam["logits"].detach().sigmoid()  # (B, C)
            key_maps = keypoint_location_maps(cam["cams"], self.cam_stride, shapes, self.strides,
                                              presence, cfg.spe_sigma)  # [(B, C, h_s, w_s)]
            for s, spe in enumerate(self.spe):
                srcs[s], phi = spe(srcs[s], key_maps[s])  # Eq. 3-4, (B, d, h_s, w_s) each
                pos[s] = pos[s] + phi  # (B, d, h_s, w_s)
        else:
            pos = [p.expand(b, -1, -1, -1) for p in pos]

        local = torch.cat([rearrange(x, "b d h w -> b (h w) d") for x in srcs], dim=1)  # (B, L, d)
        enc = self.encoder(srcs, pos, query_point=query_point, strides=self.strides)
        memory = enc["memory"]  # (B, L, d)
        logits_enc = None
        if self.enc_classifier is not None:
            per_scale = memory.split([h * w for h, w in shapes], dim=1)  # [(B, h_s*w_s, d)]
            logits_enc = self.enc_classifier(torch.stack([m.mean(dim=1) for m in per_scale]).mean(dim=0))  # (B, C)

        if self.reppg is not None:
            prototypes = self.reppg(cam["protos"])  # (B, C, d)  Eq. 10
        else:
            prototypes = memory.new_zeros(b, self.num_keypoints, cfg.d_model)  # DETR: tgt = 0
        query_pos = self.query_embed[None].expand(b, -1, -1)  # (B, C, d)
        value = local if cfg.dec_value == "local" else memory  # (B, L, d)
        attn_bias = None
        if self.key_bias_scale is not None:  # the CAM location prior on every keypoint's cross-attention
            kb = torch.cat([rearrange(m, "b c h w -> b c (h w)") for m in key_maps], dim=-1)  # (B, C, L)
            attn_bias = self.key_bias_scale * torch.log(kb + 1e-3)  # (B, C, L)
        if self.prior_bias_scale is not None:  # the training poses' spread on every keypoint's cross-attention
            pb = self.prior_bias_scale * location_prior_bias(self.prior_mean, self.prior_std, shapes, self.strides)
            attn_bias = pb[None].expand(b, -1, -1) if attn_bias is None else attn_bias + pb  # (B, C, L)
        dec = self.decoder(prototypes, memory, enc["pos"], shapes, query_pos, value, attn_bias)

        fused = dec["response_fused"]  # (B, C, H/4, W/4)
        heatmaps = fused / fused.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
        return {
            "logits_cnn": None if cam is None else cam["logits"],
            "logits_enc": logits_enc,
            "logits": dec["logits"],
            "logits_per_layer": dec["logits_per_layer"],
            "cams": None if cam is None else cam["cams"],
            "key_maps": key_maps,
            "protos": None if cam is None else cam["protos"],
            "prototypes": prototypes,
            "response_maps": dec["response_maps"],
            "response_fused": fused,
            "heatmaps": heatmaps,
            "part_feats": dec["part_feats"],
            "dec_attn": dec["attn"],
            "enc_attn": enc["attn"],
            "shapes": shapes,
            "strides": list(self.strides),
        }

    @torch.no_grad()
    def set_location_prior(self, mean, std, min_std: float = 4.0) -> None:
        """Set ``dec_prior_bias``'s Gaussians: mean / std (C, 2) (x, y) of each joint's position in input
        pixels, e.g. from ``lofr.data.topdown.location_prior`` of the training set. A joint never seen (NaN)
        keeps the crop centre and a quarter crop; stds are floored at ``min_std`` pixels."""
        if self.prior_bias_scale is None:
            raise ValueError("set_location_prior: this model was built without dec_prior_bias")
        mean, std = (torch.as_tensor(x, dtype=torch.float32).reshape(self.num_keypoints, 2) for x in (mean, std))
        seen = torch.isfinite(mean).all(-1) & torch.isfinite(std).all(-1)  # (C,)
        self.prior_mean[seen] = mean[seen].to(self.prior_mean)
        self.prior_std[seen] = std[seen].clamp_min(min_std).to(self.prior_std)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, refine: bool = True) -> dict:
        """images (B, 3, H, W) -> dict(keypoints (B, C, 2) (x, y) in input-pixel crop coordinates,
        scores (B, C), probs (B, C), outputs = the forward dict). Call ``model.eval()`` first
        (BatchNorm); see the module docstring for the score."""
        out = self(images)
        keypoints, concentration = decode_response_maps(out["response_fused"], self.strides[0], refine)
        probs = out["logits"].sigmoid()  # (B, C)
        return {"keypoints": keypoints, "scores": probs * concentration, "probs": probs, "outputs": out}

    @torch.no_grad()
    def predict_cam(self, images: torch.Tensor, refine: bool = True) -> dict:
        """The CNN branch alone, the "plain CAM" reference: keypoint c = the arg-max of its CAM M_c
        (Eq. 1, stride 16; same decoding as :meth:`predict`), score = p_c^cnn * concentration.
        images (B, 3, H, W) -> dict(keypoints (B, C, 2), scores (B, C), probs (B, C)).
        Needs the CAM head (not the Baseline)."""
        if self.cam_head is None:
            raise ValueError("predict_cam needs the CAM head (cam_head=True); the Baseline has none")
        cam = self.cam_head(self.backbone(images)[self.backbone.strides.index(self.cam_stride)])
        keypoints, concentration = decode_response_maps(normalise_cams(cam["cams"]), self.cam_stride, refine)
        probs = cam["logits"].sigmoid()  # (B, C)
        return {"keypoints": keypoints, "scores": probs * concentration, "probs": probs}

    def param_groups(self, lr: float, transformer_lr_factor: float = 0.1, weight_decay: float = 1e-4) -> list[dict]:
        """Optimizer groups as in Sec. 4.2: the CNN (backbone + CAM head) at ``lr``, the rest (the
        transformer, projections, SPE, RePPG) at ``lr * transformer_lr_factor``."""
        cnn = [p for m in (self.backbone, self.cam_head) if m is not None for p in m.parameters()]
        cnn_ids = {id(p) for p in cnn}
        rest = [p for p in self.parameters() if id(p) not in cnn_ids]
        cnn = [p for p in cnn if p.requires_grad]  # a frozen backbone has nothing to optimise
        return [{"params": cnn, "lr": lr, "weight_decay": weight_decay},
                {"params": rest, "lr": lr * transformer_lr_factor, "weight_decay": weight_decay}]


class Baseline(LOFR):
    """The paper's baseline (Tables 1-3, Table 5 row 1): the CNN + the original DETR encoder/decoder
    on the stride-4 map, sine position encoding, learned queries, trained with the final BCE only.
    Same outputs (``logits_cnn``/``logits_enc``/``cams``/``protos``/``key_maps`` are None) and
    ``predict``. In its first decoder layer the query self-attention sees zero queries, so that
    layer's value projection weight gets no gradient (as in DETR).
    Use ``model.config.loss_weights()`` for its loss."""

    def __init__(self, num_keypoints: int | None = None, config: LOFRConfig | None = None, schema=None):
        cfg = LOFRConfig.coco_r50() if config is None else config
        super().__init__(num_keypoints, cfg.as_baseline(), schema)


class PlainCAM(nn.Module):
    """The CNN branch of LOFR on its own (Sec. 3.2, Eq. 1): the backbone up to ``config.cam_stride``
    + the CAM head (pooling ``config.cam_pool``), trained with the image-level BCE only; keypoint c =
    the arg-max of its CAM M_c. The "plain CAM" row of benchmarks/synth_claim.py's table, at the CNN's speed (no
    transformer). Same ``predict`` / output keys as LOFR where they apply:

    forward(images (B, 3, H, W)) -> dict(logits_cnn = logits (B, C), cams (B, C, h, w) (Eq. 1),
        response_fused (B, C, h, w) = the CAMs normalised to sum to 1, protos (B, C, d) (Eq. 2)).
    """

    def __init__(self, num_keypoints: int | None = None, config: LOFRConfig | None = None, schema=None):
        super().__init__()
        cfg = LOFRConfig.coco_r50() if config is None else config
        if num_keypoints is not None and num_keypoints != cfg.num_keypoints:
            cfg = replace(cfg, num_keypoints=num_keypoints)
        cfg = replace(cfg, loss=LossWeights(cls_cnn=1.0, cls_enc=0.0, cls_final=0.0, div=0.0, aux_dec=0.0,
                                            mse=0.0))
        cfg.check()
        self.config = cfg
        self.num_keypoints = cfg.num_keypoints
        self.schema = _resolve_schema(cfg.num_keypoints, schema if schema is not None else cfg.schema)
        self.cam_stride = cfg.cam_stride
        self.strides = [cfg.cam_stride]
        self.backbone = Backbone(cfg.backbone, cfg.pretrained, strides=(cfg.cam_stride,), freeze_to=cfg.freeze_to)
        self.cam_head = CAMHead(self.backbone.channels[0], cfg.num_keypoints, cfg.d_model, cfg.proto_weighting,
                                cfg.cam_pool, cfg.cam_lse_r, cfg.cam_lmp_eps)

    def forward(self, images: torch.Tensor) -> dict:
        cam = self.cam_head(self.backbone(images)[0])
        return {"logits_cnn": cam["logits"], "logits": cam["logits"], "cams": cam["cams"],
                "response_fused": normalise_cams(cam["cams"]), "protos": cam["protos"]}

    # the same decoding as LOFR's: the arg-max of response_fused (here the normalised CAMs, at
    # strides[0] = cam_stride), score = p_c * concentration
    predict = LOFR.predict

    def param_groups(self, lr: float, transformer_lr_factor: float = 0.1, weight_decay: float = 1e-4):
        """All parameters are the CNN's: one group at ``lr`` (and an empty transformer group)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr, "weight_decay": weight_decay},
                {"params": [], "lr": lr * transformer_lr_factor, "weight_decay": weight_decay}]
