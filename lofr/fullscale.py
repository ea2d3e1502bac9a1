"""Notebook 08's helpers: the real recipes next to the paper, the paper's numbers, small fixtures.

* :func:`recipe_row` / :data:`PAPER_SEC42` / :func:`paper_deviations`: a shipped config as one table
  row, the paper's Sec. 4.2 settings, and where a config departs from them;
* :data:`PAPER_RESULTS`: the LOFR and Baseline rows of the paper's Tables 1, 2, 3 and 5 (quoted from
  the paper text; ``tests/test_fullscale.py`` checks each against it when the text is present);
* :func:`shrink_overrides`: ``key=value`` overrides that run a real recipe's code path on a CPU
  (no ImageNet download, small input, small batch, a handful of steps);
* :func:`crowdpose_fixture`: a tiny CrowdPose-layout dataset (14 keypoints, ``crowdIndex``) made from
  SynthPose's COCO-17 annotations, so the CrowdPose recipe and its evaluation run without the real data;
* :func:`format_table`: plain-text tables (deterministic notebook output).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from lofr.data.schemas import COCO17, CROWDPOSE14
from lofr.engine.config import TrainConfig
from lofr.notebook import subset_annotations

__all__ = ["RECIPES", "PAPER_SEC42", "PAPER_RESULTS", "recipe_row", "paper_row", "paper_deviations", "format_table",
           "shrink_overrides", "coco17_to_crowdpose14", "crowd_index", "crowdpose_fixture", "param_count"]

# The shipped configs of the paper's experiments (lofr/configs/), in the order of the paper's tables.
RECIPES = ("coco-r50-256x192", "coco-r50-384x288", "coco-hrnet32-256x192", "coco-hrnet32-384x288",
           "coco-hrnet48-256x192", "coco-hrnet48-384x288", "mpii-r50-256x256", "crowdpose-r50-256x192")

# Paper Sec. 4.2 (and Table 6 for D_En / D_De: "we choose the best setting", row 4). None = not stated.
PAPER_SEC42 = {
    "optimizer": "adam",
    "lr": 4e-3,
    "weight_decay": 1e-4,
    "transformer_lr_mult": 0.1,
    "loss": (0.2, 0.2, 0.5, 0.1),  # alpha, alpha_1, alpha_2, beta (Eq. 13)
    "scale_range": (0.65, 1.35),
    "enc_dec": (4, 6),  # D_En, D_De (Table 6)
    "input_sizes": {"coco": ((256, 192), (384, 288)), "mpii": ((256, 256), (384, 384)),
                    "crowdpose": ((256, 192), (384, 288))},  # CrowdPose: "similar with COCO"
    "epochs": {"coco": None, "mpii": 160, "crowdpose": 210},
    "half_body": {"coco": False, "mpii": True, "crowdpose": False},
    "backbones": ("resnet50", "hrnet_w32", "hrnet_w48"),
    "batch_size": None,
    "d_model": None,
    "hardware": "4 Tesla V100 (32 GB)",
}

# (paper table, dataset / split, method, backbone, input, {metric: value}); quoted from the paper text.
_T1 = ("AP", "AP50", "AP75", "APM", "APL")
_T2 = ("Head", "Sho", "Elb", "Wri", "Hip", "Kne", "Ank", "Total")
_T3 = ("AP", "AP50", "AP75", "APM", "APH")
PAPER_RESULTS: list[tuple[str, str, str, str, str, dict[str, float]]] = [
    ("Table 1", "COCO test-dev", "Baseline", "R50", "256x192", dict(zip(_T1, (34.0, 41.4, 36.2, 31.6, 36.2)))),
    ("Table 1", "COCO test-dev", "Baseline", "R50", "384x288", dict(zip(_T1, (35.1, 42.1, 37.2, 32.6, 37.3)))),
    ("Table 1", "COCO test-dev", "LOFR", "R50", "256x192", dict(zip(_T1, (54.3, 61.0, 55.6, 52.6, 56.7)))),
    ("Table 1", "COCO test-dev", "LOFR", "R50", "384x288", dict(zip(_T1, (55.4, 62.1, 56.7, 53.7, 57.9)))),
    ("Table 1", "COCO test-dev", "LOFR", "HR32", "256x192", dict(zip(_T1, (54.8, 61.8, 56.1, 53.2, 57.3)))),
    ("Table 1", "COCO test-dev", "LOFR", "HR32", "384x288", dict(zip(_T1, (55.9, 62.9, 55.3, 54.4, 58.4)))),
    ("Table 1", "COCO test-dev", "LOFR", "HR48", "256x192", dict(zip(_T1, (55.5, 62.4, 56.7, 53.8, 57.8)))),
    ("Table 1", "COCO test-dev", "LOFR", "HR48", "384x288", dict(zip(_T1, (56.4, 63.4, 55.6, 54.8, 59.0)))),
    ("Table 5", "COCO val2017", "Baseline", "R50", "-", {"AP": 39.1, "AR": 44.5}),
    ("Table 5", "COCO val2017", "LOFR", "R50", "-", {"AP": 54.9, "AR": 60.6}),
    ("Table 2", "MPII test, PCKh@0.5", "Baseline", "R50", "256x256",
     dict(zip(_T2, (53.5, 73.0, 33.8, 26.5, 15.7, 14.6, 7.1, 35.3)))),
    ("Table 2", "MPII test, PCKh@0.5", "LOFR", "R50", "256x256",
     dict(zip(_T2, (86.9, 79.8, 65.6, 54.1, 47.7, 46.2, 32.1, 61.8)))),
    ("Table 3", "CrowdPose test", "Baseline", "R50", "256x192", dict(zip(_T3, (21.5, 39.1, 28.2, 23.4, 16.6)))),
    ("Table 3", "CrowdPose test", "LOFR", "R50", "256x192", dict(zip(_T3, (42.5, 58.7, 48.6, 43.8, 34.1)))),
]

_BACKBONE = {"resnet50": "R50", "hrnet_w32": "HR32", "hrnet_w48": "HR48"}


# ---------------------------------------------------------------------------------- recipes
def recipe_row(cfg: TrainConfig) -> dict[str, str]:
    """One shipped config as a table row (strings): backbone, input, d_model, D_En/D_De, epochs,
    global batch, lr, transformer lr factor, loss weights alpha / alpha_1 / alpha_2 / beta (Eq. 13)."""
    a, o, w = cfg.arch, cfg.optim, cfg.loss
    h, wd = cfg.data.input_size
    return {
        "config": cfg.name,
        "backbone": _BACKBONE.get(a.get("backbone", ""), str(a.get("backbone"))),
        "input": f"{h}x{wd}",
        "d_model": str(a.get("d_model", "")),
        "D_En/D_De": f"{a.get('enc_layers')}/{a.get('dec_layers')}",
        "epochs": str(o.epochs),
        "batch": str(o.batch_size),
        "lr": f"{o.lr:g}",
        "tr. lr x": f"{o.transformer_lr_mult:g}",
        "a/a1/a2/b": f"{w.cls_cnn:g}/{w.cls_enc:g}/{w.cls_final:g}/{w.div:g}",
        "half-body": f"{cfg.data.aug.half_body_prob:g}",
    }


def paper_row(dataset: str) -> dict[str, str]:
    """What Sec. 4.2 says for ``dataset`` ("coco" | "mpii" | "crowdpose"), in :func:`recipe_row`'s
    columns; "?" = not stated in the paper."""
    p = PAPER_SEC42
    ep = p["epochs"][dataset]
    return {
        "config": f"paper, {dataset}",
        "backbone": "R50/HR32/HR48" if dataset == "coco" else "R50",
        "input": " or ".join(f"{h}x{w}" for h, w in p["input_sizes"][dataset]),
        "d_model": "?",
        "D_En/D_De": "{}/{}".format(*p["enc_dec"]),
        "epochs": str(ep) if ep else "?",
        "batch": "?",
        "lr": f"{p['lr']:g}",
        "tr. lr x": f"{p['transformer_lr_mult']:g}",
        "a/a1/a2/b": "/".join(f"{v:g}" for v in p["loss"]),
        "half-body": "yes" if p["half_body"][dataset] else "no",
    }


def paper_deviations(cfg: TrainConfig) -> list[str]:
    """Where ``cfg`` departs from what Sec. 4.2 states (settings the paper leaves open are not
    checked). [] = the config follows the paper wherever the paper says something."""
    p, o, a, d = PAPER_SEC42, cfg.optim, cfg.arch, cfg.data
    ds = d.schema
    out = []
    for key, have, want in (("optim.optimizer", o.optimizer, p["optimizer"]), ("optim.lr", o.lr, p["lr"]),
                            ("optim.weight_decay", o.weight_decay, p["weight_decay"]),
                            ("optim.transformer_lr_mult", o.transformer_lr_mult, p["transformer_lr_mult"])):
        if have != want:
            out.append(f"{key} {have} (paper {want})")
    weights = (cfg.loss.cls_cnn, cfg.loss.cls_enc, cfg.loss.cls_final, cfg.loss.div)
    if weights != p["loss"]:
        out.append(f"loss weights {weights} (paper {p['loss']}, Eq. 13)")
    if cfg.loss.mse:
        out.append(f"loss.mse {cfg.loss.mse}: location supervision (the paper's location-free setting has none)")
    if tuple(d.aug.scale_range) != p["scale_range"] or not d.aug.flip_prob:
        out.append(f"augmentation flip {d.aug.flip_prob}, scale {tuple(d.aug.scale_range)} "
                   f"(paper: flip, {p['scale_range']})")
    if (d.aug.half_body_prob > 0) != p["half_body"][ds]:
        want = "on" if p["half_body"][ds] else "off"
        out.append(f"data.aug.half_body_prob {d.aug.half_body_prob} (paper: half-body {want})")
    if tuple(d.input_size) not in p["input_sizes"][ds]:
        out.append(f"data.input_size {tuple(d.input_size)} (paper {p['input_sizes'][ds]})")
    if p["epochs"][ds] is not None and o.epochs != p["epochs"][ds]:
        out.append(f"optim.epochs {o.epochs} (paper {p['epochs'][ds]})")
    if (a.get("enc_layers"), a.get("dec_layers")) != p["enc_dec"]:
        out.append(f"D_En/D_De {a.get('enc_layers')}/{a.get('dec_layers')} (paper {p['enc_dec']}, Table 6)")
    if a.get("backbone") not in p["backbones"]:
        out.append(f"arch.backbone {a.get('backbone')} (paper: {', '.join(p['backbones'])})")
    return out


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows of dicts -> a fixed-width text table (columns: the first row's keys by default)."""
    columns = list(columns or rows[0].keys())
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), "-" * len(line(columns))] + [line(r) for r in cells])


def param_count(model) -> int:
    """Number of parameters of a torch module."""
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------ CPU overrides
def shrink_overrides(input_size=(128, 96), batch: int = 4, steps: int = 3, device: str = "cpu",
                     amp: str = "off", warmup_steps: int | None = None) -> list[str]:
    """``key=value`` overrides that run a real recipe's code path cheaply: no ImageNet download
    (``arch.pretrained=false``), ``input_size`` (H, W) crops, a global batch of ``batch``, ``steps``
    optimiser steps then one evaluation, data loaded in the training process. The architecture
    (backbone, d_model, D_En / D_De, heads, FFN) and the optimiser are the recipe's."""
    h, w = input_size
    out = ["arch.pretrained=false", f"data.input_size=[{h},{w}]", f"optim.batch_size={batch}", f"max_steps={steps}",
           "data.workers=0", "eval_every=0", f"device={device}", f'amp="{amp}"']
    if warmup_steps is not None:
        out.append(f"optim.warmup_steps={warmup_steps}")
    return out


# ------------------------------------------------------------------------- CrowdPose fixture
def coco17_to_crowdpose14(kps17: np.ndarray, width: int, height: int) -> np.ndarray:
    """(17, 3) COCO keypoints (x, y, v) -> (14, 3) CrowdPose keypoints.

    The 12 limb joints are copied; neck = the shoulders' midpoint (both labelled); top_head = a
    stand-in, the nose moved away from the neck by half the nose-neck distance (nose and both
    shoulders labelled). A derived point outside the image is marked unlabelled (v = 0)."""
    k = np.asarray(kps17, dtype=np.float64).reshape(17, 3)
    idx = {n: i for i, n in enumerate(COCO17.keypoints)}
    out = np.zeros((14, 3))
    for j, name in enumerate(CROWDPOSE14.keypoints[:12]):
        out[j] = k[idx[name]]
    ls, rs, nose = k[idx["left_shoulder"]], k[idx["right_shoulder"]], k[idx["nose"]]
    if ls[2] > 0 and rs[2] > 0:
        neck = 0.5 * (ls[:2] + rs[:2])
        out[13] = [*neck, min(ls[2], rs[2])]
        if nose[2] > 0:
            out[12] = [*(nose[:2] + 0.5 * (nose[:2] - neck)), min(nose[2], ls[2], rs[2])]
    for j in (12, 13):
        x, y = out[j, :2]
        if out[j, 2] > 0 and not (0 <= x < width and 0 <= y < height):
            out[j] = 0.0
    out[out[:, 2] == 0] = 0.0
    return out


def crowd_index(anns: list[dict]) -> float:
    """CrowdPose's Crowd Index of one image: the mean over its persons of (labelled joints of OTHER
    persons inside the person's box) / (the person's own labelled joints). 0 = nobody overlaps."""
    people = [(np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3), a["bbox"]) for a in anns]
    people = [(k, b) for k, b in people if (k[:, 2] > 0).any()]
    ratios = []
    for i, (k, (x, y, w, h)) in enumerate(people):
        others = [o[o[:, 2] > 0, :2] for j, (o, _) in enumerate(people) if j != i]
        pts = np.concatenate(others) if others else np.zeros((0, 2))
        inside = ((pts[:, 0] >= x) & (pts[:, 0] <= x + w) & (pts[:, 1] >= y) & (pts[:, 1] <= y + h)).sum()
        ratios.append(inside / (k[:, 2] > 0).sum())
    return float(np.mean(ratios)) if ratios else 0.0


def _to_crowdpose(data: dict, img_dir: Path, out_img: Path, prefix: str, id_offset: int) -> dict:
    """A COCO-17 dict -> a CrowdPose-14 dict (ids shifted by ``id_offset``, images copied to
    ``out_img`` as ``prefix + file_name``), with a crowdIndex per image."""
    images, anns = [], []
    by_image: dict[int, list] = {}
    sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    for a in data["annotations"]:
        if a.get("iscrowd"):
            continue
        k = coco17_to_crowdpose14(a["keypoints"], *sizes[a["image_id"]])
        n = int((k[:, 2] > 0).sum())
        new = {"id": a["id"] + id_offset, "image_id": a["image_id"] + id_offset, "category_id": 1, "iscrowd": 0,
               "bbox": [float(v) for v in a["bbox"]], "num_keypoints": n,
               "keypoints": [float(v) if i % 3 < 2 else int(v) for i, v in enumerate(k.ravel())]}
        anns.append(new)
        by_image.setdefault(a["image_id"], []).append(new)
    for im in data["images"]:
        name = prefix + im["file_name"]
        shutil.copyfile(img_dir / im["file_name"], out_img / name)
        images.append({"id": im["id"] + id_offset, "file_name": name, "width": im["width"], "height": im["height"],
                       "crowdIndex": round(crowd_index(by_image.get(im["id"], [])), 4)})
    cats = [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(CROWDPOSE14.keypoints),
             "skeleton": CROWDPOSE14.skeleton_coco}]
    return {"images": images, "annotations": anns, "categories": cats}


def crowdpose_fixture(synth_root, out_root, n_trainval: int = 16, n_test: int = 8) -> Path:
    """A CrowdPose-layout dataset in ``out_root`` (annotations/crowdpose_{trainval,test}.json,
    images/) from the first images of SynthPose's train (-> trainval) and val (-> test) splits,
    keypoints converted by :func:`coco17_to_crowdpose14`. Test images get ids + 100000 and the
    prefix ``test_`` (SynthPose's two splits reuse ids and file names). Returns ``out_root``."""
    synth_root, out_root = Path(synth_root), Path(out_root)
    (out_root / "annotations").mkdir(parents=True, exist_ok=True)
    (out_root / "images").mkdir(parents=True, exist_ok=True)
    for split, n, src, prefix, offset in (("trainval", n_trainval, "train", "", 0),
                                          ("test", n_test, "val", "test_", 100000)):
        tmp = out_root / "annotations" / f".{src}_subset.json"
        subset_annotations(synth_root / "annotations" / f"person_keypoints_{src}2017.json", n, tmp)
        data = _to_crowdpose(json.loads(tmp.read_text()), synth_root / f"{src}2017", out_root / "images", prefix,
                             offset)
        tmp.unlink()
        (out_root / "annotations" / f"crowdpose_{split}.json").write_text(json.dumps(data))
    return out_root
