"""Does a trained presence classifier read the joint, or the whole person? An occlusion sweep on val crops.

If masking a patch AT a joint lowers that joint's presence probability more than masking a patch elsewhere,
the classifier reads local evidence and a better pooling / decoding can turn it into a location; if not, it
reads global evidence (the person's extent, the crop border) and no pooling will localise (RISE / occlusion
sensitivity, Zeiler & Fergus 2014, Petsiuk et al. 2018).

For each of ``--crops`` SynthPose val crops (eval mode, no flip) the image is masked with one ``--patch`` x
``--patch`` square at a time (the ImageNet mean colour: 0 after normalisation) on a grid of stride ``--patch``,
and the drop of every joint's presence probability p_c (the model's final logits) is recorded. For every joint
that is annotated and visible in the crop:

* **drop at joint**: the drop when the patch covering the joint is masked; **drop elsewhere**: the mean drop over
  the patches more than one patch away from it;
* **hit**: the patch with the largest drop is within one patch of the joint (Chebyshev distance <= 1);
  **prior hit**: the same for the patch of the joint's mean position on the training crops (the mean-pose prior)
  — a classifier that reads "where joint c usually is" hits as often as the prior, not more.

    python benchmarks/occlusion.py runs/learning_curves/cam-lse-s8/seed0/step1224.pt [more .pt ...]

Writes ``benchmarks/results/occlusion.{json,md}`` (one row per checkpoint).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, command_line, git_commit, machine_info, markdown_table, write_results  # noqa: E402


def occlusion_drops(model, images: torch.Tensor, patch: int, logits_key: str = "logits") -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, 3, H, W) -> (p (B, C) unmasked presence probabilities, drops (B, C, H/patch, W/patch):
    p minus p with that patch set to 0)."""
    b, _, h, w = images.shape
    gh, gw = h // patch, w // patch
    with torch.no_grad():
        p = model(images)[logits_key].sigmoid()  # (B, C)
        drops = p.new_zeros(b, p.shape[1], gh, gw)
        for i in range(gh):
            for j in range(gw):
                masked = images.clone()
                masked[:, :, i * patch:(i + 1) * patch, j * patch:(j + 1) * patch] = 0.0
                drops[:, :, i, j] = p - model(masked)[logits_key].sigmoid()
    return p, drops


def score(drops: np.ndarray, keypoints: np.ndarray, visible: np.ndarray, prior: np.ndarray, patch: int) -> dict:
    """drops (N, C, gh, gw), keypoints (N, C, 2) crop pixels, visible (N, C) bool, prior (C, 2) -> the summary."""
    n, c, gh, gw = drops.shape
    ii, jj = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    at, elsewhere, hit, prior_hit, chance = [], [], [], [], []
    for k in range(n):
        for q in range(c):
            if not visible[k, q]:
                continue
            x, y = keypoints[k, q]
            ci, cj = int(np.clip(y // patch, 0, gh - 1)), int(np.clip(x // patch, 0, gw - 1))
            near = np.maximum(abs(ii - ci), abs(jj - cj)) <= 1
            d = drops[k, q]
            at.append(d[ci, cj])
            elsewhere.append(d[~near].mean())
            top = np.unravel_index(d.argmax(), d.shape)
            hit.append(near[top])
            pi = int(np.clip(prior[q, 1] // patch, 0, gh - 1))
            pj = int(np.clip(prior[q, 0] // patch, 0, gw - 1))
            prior_hit.append(near[pi, pj])
            chance.append(near.mean())
    at, elsewhere = np.array(at), np.array(elsewhere)
    return {"joints": len(at), "drop_at_joint": float(at.mean()), "drop_elsewhere": float(elsewhere.mean()),
            "at_gt_elsewhere": float((at > elsewhere).mean()), "hit": float(np.mean(hit)),
            "prior_hit": float(np.mean(prior_hit)), "chance_hit": float(np.mean(chance))}


def _row(name: str, s: dict) -> list:
    return [name, s["joints"], f"{s['drop_at_joint']:.4f}", f"{s['drop_elsewhere']:.4f}", f"{s['at_gt_elsewhere']:.3f}",
            f"{s['hit']:.3f}", f"{s['prior_hit']:.3f}", f"{s['chance_hit']:.3f}"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--crops", type=int, default=200)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results-dir", default=str(RESULTS))
    p.add_argument("--results-name", default="occlusion")
    p.add_argument("--append", action="store_true", help="keep the rows already in the results file (other checkpoints)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    from tqdm.auto import tqdm

    from lofr.data.topdown import collate, mean_pose_prior
    from lofr.engine.models import load_model
    from lofr.engine.sampling import build_datasets

    rows, results = [], {}
    old = Path(args.results_dir) / f"{args.results_name}.json"
    if args.append and old.is_file():
        import json

        results = {k: v for k, v in json.loads(old.read_text())["results"].items()
                   if v["checkpoint"] not in args.checkpoints}
        rows = [_row(k, v) for k, v in results.items()]
    for ck in args.checkpoints:
        model, cfg = load_model(ck, "cpu")
        model.eval()
        train_ds, val_ds = build_datasets(cfg)
        prior = mean_pose_prior(train_ds)
        rng = np.random.default_rng(0)
        idx = np.sort(rng.choice(len(val_ds), size=min(args.crops, len(val_ds)), replace=False))
        all_drops, kps, vis = [], [], []
        for start in tqdm(range(0, len(idx), 50), desc=f"occlusion {Path(ck).parent.parent.name}", leave=False):
            batch = collate([val_ds[int(i)] for i in idx[start:start + 50]])
            _, drops = occlusion_drops(model, batch["image"], args.patch)
            all_drops.append(drops.numpy())
            kps.append(batch["keypoints"].numpy())
            vis.append(batch["visible"].numpy() > 0)
        s = score(np.concatenate(all_drops), np.concatenate(kps), np.concatenate(vis), prior, args.patch)
        name = f"{Path(ck).parent.parent.name} {Path(ck).parent.name} {Path(ck).stem}"
        results[name] = {"checkpoint": str(ck), "model": cfg.model, **s}
        rows.append(_row(name, results[name]))
        print(rows[-1], flush=True)
    table = markdown_table(["checkpoint", "joints", "drop at joint", "drop elsewhere", "P(at > elsewhere)",
                            "arg-max hit", "prior hit", "chance hit"], rows)
    notes = (f"{args.crops} SynthPose val crops, {args.patch}x{args.patch} patches set to the mean colour. Drops are in "
             "presence probability. Hit = the patch with the largest drop within one patch of the joint; prior hit = "
             "the mean-pose prior's patch within one patch; chance = the share of patches within one patch.")
    out = {"command": command_line("benchmarks/occlusion.py", argv), "commit": git_commit(),
           "machine": machine_info(), "wall_s": round(time.perf_counter() - t0, 1), "patch": args.patch,
           "crops": args.crops, "results": results, "table": table}
    write_results(out, args.results_name, "Occlusion sweep: do presence classifiers read the joint?",
                  args.results_dir, notes)
    print(table)
    return out


if __name__ == "__main__":
    main()
