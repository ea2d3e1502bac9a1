"""Does a weak model's map add ANY location information to the pose prior? Pose-prior decoding at several weights.

``decode=pose_prior`` (``lofr.eval.pose_prior``) combines each joint's map with a pose model of the training
locations (no images) at the map weight alpha = 1. This sweeps alpha on the val crops: alpha -> 0 is the pose
model alone (about the mean-pose prior), large alpha the map's own local maxima. If no alpha beats alpha = 0, the
map says nothing the prior does not; if one does, the map carries location information and the question is how
to weigh it. Choosing alpha here uses the val locations: a diagnostic, not a location-free recipe.

    python benchmarks/decode_weight.py runs/learning_curves/lofr/seed0/step1224.pt [more .pt ...]

For LOFR checkpoints the CAM (LOFR's CNN branch) is swept too. Scores are the project's evaluation (cached eval
crops when the config caches, flip test). Writes ``benchmarks/results/decode_weight.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, command_line, git_commit, machine_info, markdown_table, write_results  # noqa: E402

ALPHAS = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--alphas", nargs="+", type=float, default=list(ALPHAS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results-dir", default=str(RESULTS))
    p.add_argument("--results-name", default="decode_weight")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    from dataclasses import replace

    from lofr.data.topdown import mean_pose_prior
    from lofr.engine.feature_cache import eval_crops
    from lofr.engine.models import load_model
    from lofr.engine.sampling import build_datasets
    from lofr.engine.evaluation import evaluate, fit_pose_prior

    headers = ["checkpoint", "map", "arg-max", *[f"alpha {a:g}" for a in args.alphas], "best alpha - alpha 0"]
    rows, results = [], {}
    for ck in args.checkpoints:
        model, cfg = load_model(ck, "cpu")
        train_ds, val_ds = build_datasets(cfg)
        crops = eval_crops(cfg, model, train_ds, val_ds)
        pose_model = fit_pose_prior(train_ds)
        prior = evaluate(model, crops, cfg.data.eval_batch_size, cfg.data.flip_test,
                         prior_pose=mean_pose_prior(train_ds)).prior
        name = " ".join(Path(ck).parts[-3:])
        sources = ["response"] + (["cam"] if cfg.model == "lofr" else [])
        for source in sources:
            def pck(pp):
                r = evaluate(model, crops, cfg.data.eval_batch_size, cfg.data.flip_test, source=source, pose_prior=pp)
                return r.pck[0.1], r.pck[0.2]

            base = pck(None)
            sweep = {a: pck(replace(pose_model, alpha=a)) for a in args.alphas}
            best = max(args.alphas, key=lambda a: sweep[a][0])
            gain = sweep[best][0] - sweep[args.alphas[0]][0]
            results[f"{name} {source}"] = {"argmax": base, "sweep": {str(a): v for a, v in sweep.items()},
                                           "best_alpha": best, "mean_pose_prior": (prior.pck[0.1], prior.pck[0.2])}
            rows.append([name, source, f"{base[0]:.3f} / {base[1]:.3f}",
                         *[f"{sweep[a][0]:.3f} / {sweep[a][1]:.3f}" for a in args.alphas], f"{gain:+.3f} (alpha {best:g})"])
            print(rows[-1], flush=True)
    table = markdown_table(headers, rows)
    notes = ("Cells: PCK@0.1 / PCK@0.2 on SynthPose val. alpha = the weight of the map's log in the pose-prior decoder "
             f"(alpha {args.alphas[0]:g}: the pose model alone). The mean-pose prior on the same crops: "
             f"{prior.pck[0.1]:.3f} / {prior.pck[0.2]:.3f}. The last column: PCK@0.1 of the best alpha minus alpha "
             f"{args.alphas[0]:g}'s: > 0 means the map adds location information to the prior (alpha picked on val: a "
             "diagnostic).")
    out = {"command": command_line("benchmarks/decode_weight.py", argv), "commit": git_commit(),
           "machine": machine_info(), "wall_s": round(time.perf_counter() - t0, 1), "alphas": list(args.alphas),
           "results": results, "table": table}
    write_results(out, args.results_name, "Pose-prior decoding at several map weights", args.results_dir, notes)
    print(table)
    return out


if __name__ == "__main__":
    main()
