"""Does the image-level signal need more data? Presence and plain-CAM localisation vs SynthPose's size.

The levers "longer training / pretraining on SynthPose", measured where they start: whether a CNN learns
the image-level labels at all. At the synth-cpu budget (2040 steps) it barely does: the train BCE of every weak
model stays near the label marginals'. The generator is free, so this script trains the same model for the
same number of steps on the default set and on SynthPose with ``--big-train`` (default 40 000) training
images — the default set plus more images from the same seeded generator (rendering is deterministic per
seed, split and index), evaluated on the SAME val crops. Measured (``results/presence_scale.md``, 8000 steps):
with the training pipeline's fresh augmentation per epoch the 5k set is NOT memorised (held-out presence BCE
0.512 vs 0.508 on 40k; marginals 0.623): what the image-level signal needed was steps. Both localise far better
than at 2040 steps (strict-label plain CAM 0.075 / 0.275 there, ``cam_pooling_label_leak.md``): 0.174 / 0.542
on 5k, 0.219 / 0.570 on 40k — still below the mean-pose prior (0.327 / 0.720). (Without augmentation, on
cached crops, a CNN does memorise the 5k set: train BCE -> 0 while the held-out BCE rises — a lab run.)

The model is ``cam_pooling.py``'s ``lse-s8-strict`` row: ``model=cam`` (LOFR's CNN branch alone), the CAM
head on the stride-8 map with log-sum-exp pooling, the strictly location-free label rule
(``data.labels=annotation``) and no half-body crops, so nothing but the image-level labels teaches it.

    5k     the default SynthPose (``data.root``: the config's or ``--data-root``)
    big    SynthPose with ``--big-train`` training images (generated once into ``--big-root``,
           default ``<lofr data dir>/synthpose-<n>``: about 2 min and 460 MB for 40 000 on 2 cores)

Columns: PCK@0.1 / PCK@0.2 / px error of the CAM arg-max (SynthPose val, flip test), the presence BCE of the
model's image-level logits on the val crops ("val BCE"; the label marginals of the training set score
"marginal BCE"), and the training BCE over the last logged steps ("train BCE").

    python benchmarks/presence_scale.py                   # 2 rows x 8000 steps (~20 min on 2 cores)
    python benchmarks/presence_scale.py --steps 2040      # the synth-cpu budget
    python benchmarks/presence_scale.py --quick --data-root ROOT --big-train 24 --big-root DIR   # smoke run

Writes ``benchmarks/results/presence_scale.{json,md}``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cam_pooling import ROWS as CAM_ROWS  # noqa: E402
from common import (begin, finish, format_cell, markdown_table, run_dir, run_rows, train_seconds,  # noqa: E402
                    training_parser)

MODEL = [*CAM_ROWS["lse-s8-strict"][1], "eval_every=0"]  # that row's model and labels, evaluated only at the end
COLUMNS = ("PCK@0.1", "PCK@0.2", "px err")


def default_root(args) -> Path:
    """The 5k row's SynthPose root: ``--data-root``, else the default one (generated when missing)."""
    from lofr.data.synth import ensure_synthpose

    return Path(args.data_root) if args.data_root else ensure_synthpose()


def big_root(small: Path, n_train: int, root=None) -> Path:
    """SynthPose with ``n_train`` training images and the generator parameters (seed, image size) of the
    SynthPose at ``small`` (its annotation file's ``info``), so its first images are ``small``'s."""
    from lofr.data.synth import VERSION, ensure_synthpose
    from lofr.paths import data_dir

    ann = small / "annotations" / "person_keypoints_train2017.json"
    info = json.loads(ann.read_text()).get("info", {}) if ann.is_file() else {}
    if info.get("version") != VERSION:
        raise ValueError(f"{ann}: not a {VERSION} annotation file (info.version {info.get('version')!r}); "
                         "presence_scale.py grows SynthPose only")
    root = Path(root) if root else data_dir() / f"synthpose-{n_train}"
    return ensure_synthpose(root, n_train=n_train, n_val=0, seed=info["seed"], image_size=info["image_size"])


def steps_overrides(n_instances: int, batch: int, steps: int) -> list[str]:
    """``steps`` optimiser steps on a schedule that ends right after them: the fewest whole epochs that hold
    them, cut at ``max_steps``."""
    per_epoch = max(1, n_instances // batch)
    return [f"optim.epochs={math.ceil(steps / per_epoch)}", f"max_steps={steps}"]


def presence_bce(model, dataset, batch_size: int, prevalence) -> dict:
    """Mean binary cross-entropy of the model's image-level logits against the crops' labels, and that of
    the constant prediction ``prevalence`` (C,) (the training set's label marginals)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from lofr.data.topdown import collate

    model.eval()
    total, marginal, n = 0.0, 0.0, 0
    p = torch.as_tensor(prevalence, dtype=torch.float32).clamp(1e-4, 1 - 1e-4)
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
            y = batch["labels"].float()
            logits = model(batch["image"])["logits"]
            total += F.binary_cross_entropy_with_logits(logits, y, reduction="sum").item()
            marginal += F.binary_cross_entropy(p.expand_as(y), y, reduction="sum").item()
            n += y.numel()
    return {"val_bce": total / n, "marginal_bce": marginal / n}


def train_bce(run_dir: Path, last: int = 10) -> float:
    """Mean of the last ``last`` logged training BCE values (steps.jsonl's ``weak``); NaN when none was logged."""
    path = run_dir / "steps.jsonl"
    lines = [json.loads(s) for s in path.read_text().splitlines() if s.strip()] if path.is_file() else []
    vals = [r["weak"] for r in lines[-last:] if "weak" in r]
    return sum(vals) / len(vals) if vals else float("nan")


def format_table(rows: dict) -> str:
    headers = ["training set", "images", "steps", *COLUMNS, "val BCE", "marginal BCE", "train BCE", "train s"]
    lines = []
    for row in rows.values():
        ex = next(iter(row["extra"].values()))
        steps = next(iter(row["timing"].values()), {}).get("steps", "")
        lines.append([row["label"], f"{ex['images']:,}", steps,
                      *[format_cell(row["mean"][c], row["std"][c], 1 if c == "px err" else 3) for c in COLUMNS],
                      f"{ex['val_bce']:.3f}", f"{ex['marginal_bce']:.3f}", f"{ex['train_bce']:.3f}", train_seconds(row)])
    return markdown_table(headers, lines)


NOTES = """\
Model: `cam_pooling.py`'s `lse-s8-strict` row (`model=cam`, stride-8 CAM, log-sum-exp pooling, `data.labels=annotation`,
no half-body); same steps, batch and schedule length for both rows; the big set is the default one plus more images
of the same generator, evaluated on the same val crops. BCE columns: image-level presence (lower is better; "marginal"
= predicting every joint's training prevalence)."""


def main(argv=None) -> dict:
    p = training_parser(__doc__, "presence_scale")
    p.add_argument("--steps", type=int, default=8000, help="optimiser steps per row (default 8000)")
    p.add_argument("--big-train", type=int, default=40000, help="training images of the big set (default 40000)")
    p.add_argument("--big-root", help="where the big set lives (default <lofr data dir>/synthpose-<n>)")
    args = p.parse_args(argv)
    t_start, common = begin(args)
    from lofr.data.topdown import TopDownDataset
    from lofr.engine.config import load_config

    small = default_root(args)
    big = big_root(small, args.big_train, args.big_root)
    val = [f"data.val_ann={small / 'annotations' / 'person_keypoints_val2017.json'}", f"data.val_img={small / 'val2017'}"]
    batch = load_config(args.config, [*common, *MODEL]).optim.batch_size
    rows, info = {}, {}
    for key, root in (("5k", small), ("big", big)):
        ann = root / "annotations" / "person_keypoints_train2017.json"
        records = TopDownDataset(ann, root / "train2017", labels="annotation").records
        budget = ["log_every=1"] if args.quick else steps_overrides(len(records), batch, args.steps)
        n_images = len({r.image_id for r in records})
        label = "default SynthPose" if key == "5k" else f"SynthPose, {args.big_train:,} training images"
        rows[key] = (label, [*MODEL, f"data.root={root}", *val, *budget])
        prevalence = sum((r.keypoints[:, 2] > 0).astype(float) for r in records) / len(records)
        info[key] = {"images": n_images, "instances": len(records), "prevalence": prevalence}

    def per_model(key, seed, model, cfg, val_ds) -> dict:
        out = presence_bce(model, val_ds, cfg.data.eval_batch_size, info[key]["prevalence"])
        run = run_dir(Path(args.checkpoint_dir or args.runs_dir), key, seed, loading=bool(args.checkpoint_dir))
        return {**out, "train_bce": train_bce(run), "images": info[key]["images"], "instances": info[key]["instances"]}

    result = run_rows(rows, args, common, per_model=per_model)
    return finish("presence_scale", "Presence and plain-CAM localisation vs SynthPose's size",
                  "benchmarks/presence_scale.py", argv, args, t_start, format_table(result), NOTES,
                  overrides=common, rows=result)


if __name__ == "__main__":
    main()
