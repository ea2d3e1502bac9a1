"""What the image-level labels can teach: how often a joint's label differs from its mirror partner's and its
kinematic neighbours'.

No loss on image-level labels can tell a left wrist from a right one in crops where both are labelled the
same: the labels never distinguish them there. This counts, over the training crops, how often the labels of

* each mirror pair (left / right) differ,
* each kinematic edge of the schema (knee / ankle, ...) differ,

under the two label rules (``lofr.data.topdown``):

* ``crop`` (synth-cpu's default): annotated AND inside the augmented crop — read from the feature cache's
  augmented training views (the crops the models train on; ``--views`` of them);
* ``annotation`` (strict, location-free): annotated, whatever the augmentation did — from the annotation file.

    python benchmarks/label_stats.py                 # SynthPose train, synth-cpu's cache views 0-1
    python benchmarks/label_stats.py --data-root data/other-synthpose

Writes ``benchmarks/results/label_stats.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, command_line, git_commit, machine_info, markdown_table, write_results  # noqa: E402


def disagreement(labels: np.ndarray, pairs) -> dict:
    """labels (N, C) in {0, 1}, pairs [(i, j)] -> {(i, j): fraction of the N crops where labels differ}."""
    return {(i, j): float((labels[:, i] != labels[:, j]).mean()) for i, j in pairs}


def annotation_labels(ds) -> np.ndarray:
    """The strict rule on every training instance: (N, C) = keypoint annotated (v > 0)."""
    return np.stack([(np.asarray(r.keypoints)[:, 2] > 0).astype(np.float32) for r in ds.records])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="synth-cpu")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-root")
    p.add_argument("--views", type=int, default=2, help="augmented cache views to read (default 2, synth-cpu's)")
    p.add_argument("--results-dir", default=str(RESULTS))
    p.add_argument("--results-name", default="label_stats")
    args = p.parse_args(argv)
    t0 = time.perf_counter()

    from lofr.engine.config import load_config
    from lofr.engine.feature_cache import training_cache
    from lofr.engine.models import build_model
    from lofr.engine.sampling import build_datasets

    cfg = load_config(args.config, list(args.set) + [f"data.cache_views={args.views}"]
                      + ([f"data.root={args.data_root}"] if args.data_root else []))
    train_ds, val_ds = build_datasets(cfg)
    schema = train_ds.schema
    model = build_model(cfg, schema.num_keypoints)
    samples, _ = training_cache(cfg, model, train_ds, val_ds, "cpu", "off", True, False, False, say=lambda *a: None)
    crop = np.concatenate([samples.cache.targets[k]["labels"] for k in range(args.views)])  # (K N, C)
    strict = annotation_labels(train_ds)  # (N, C)
    names = schema.keypoints
    rules = {"crop": crop, "annotation": strict}
    out_rows, data = [], {}
    for kind, pairs in (("mirror", schema.flip_pairs), ("kinematic", schema.edges)):
        for i, j in pairs:
            cells = {rule: disagreement(lab, [(i, j)])[(i, j)] for rule, lab in rules.items()}
            data[f"{kind}:{names[i]}-{names[j]}"] = cells
            out_rows.append([kind, f"{names[i]} / {names[j]}", f"{cells['crop']:.3f}", f"{cells['annotation']:.3f}"])
    means = {kind: {rule: float(np.mean([v[rule] for k, v in data.items() if k.startswith(kind)])) for rule in rules}
             for kind in ("mirror", "kinematic")}
    for kind in ("mirror", "kinematic"):
        out_rows.append([kind, "**mean**", f"{means[kind]['crop']:.3f}", f"{means[kind]['annotation']:.3f}"])
    prevalence = {rule: {names[c]: float(lab[:, c].mean()) for c in range(len(names))} for rule, lab in rules.items()}
    table = markdown_table(["pair kind", "joints", f"differ, crop rule ({len(crop)} augmented crops)",
                            f"differ, annotation rule ({len(strict)} instances)"], out_rows)
    d = {k: v["crop"] - v["annotation"] for k, v in data.items()}
    most = max(d, key=d.get)
    notes = (f"Fraction of training crops whose two labels differ. A pair whose labels never differ gives no loss a "
             f"reason to tell its joints apart; here mirror pairs differ in {means['mirror']['crop']:.1%} of the crops "
             f"under the crop rule and {means['mirror']['annotation']:.1%} under the annotation rule, kinematic "
             f"neighbours in {means['kinematic']['crop']:.1%} / {means['kinematic']['annotation']:.1%}. Mean label "
             f"prevalence {np.mean(crop):.3f} (crop rule) / {np.mean(strict):.3f} (annotation rule). Where the crop rule "
             f"differs more, the augmented crop border cut the pair (largest: {most.split(':')[1]}, "
             f"{d[most]:+.3f}): a location signal the annotation rule does not carry.")
    out = {"command": command_line("benchmarks/label_stats.py", argv), "commit": git_commit(),
           "machine": machine_info(), "wall_s": round(time.perf_counter() - t0, 1), "config": args.config,
           "views": args.views, "pairs": data, "means": means, "prevalence": prevalence, "table": table}
    write_results(out, args.results_name, "What the image-level labels distinguish", args.results_dir, notes)
    print(table)
    print(notes)
    return out


if __name__ == "__main__":
    main()
