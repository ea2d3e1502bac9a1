#!/usr/bin/env bash
# Issue 6, item 8: the GPU cost check, sized for under 8 minutes on one H100.
#
#   bash benchmarks/gpu.sh              # on a CUDA machine
#   QUICK=1 bash benchmarks/gpu.sh      # dry run: the same steps with tiny sizes on the CPU (< 90 s)
#   bash benchmarks/gpu.sh --dry-run    # the same as QUICK=1
#
# 1. benchmarks/cost.py --device cuda --amp: LOFR next to the baseline for synth-cpu and the COCO
#    R50 256x192 recipe (arch.pretrained=false: nothing is downloaded): train / inference img/s,
#    peak memory, params, GMACs -> benchmarks/results/cost_gpu.{json,md}
# 2. lofr synth: SynthPose rendered at 320x256 (N_TRAIN / N_VAL images) into a temporary folder
# 3. lofr train --config coco-r50-256x192: STEPS steps of the COCO recipe on it (batch 128, bf16
#    autocast), then lofr eval: OKS AP / PCK of the result next to the mean-pose prior
#    -> benchmarks/results/gpu_recipe.{json,md}
#
# The recipe is the shipped config's except: arch.pretrained=false, max_steps=STEPS (the schedule
# still follows the config's 210 epochs, so this is the start of the long run), and
# optim.warmup_steps=WARMUP (default 100; the config's 500 is longer than the whole run).
# Environment: PYTHON (default .venv/bin/python if present, else python), STEPS (300), WARMUP (100),
# N_TRAIN (3000), N_VAL (300), WORKERS (8 data-loading processes), WORK (scratch folder; default a
# new temporary one, removed at the end unless KEEP=1), RESULTS (default benchmarks/results;
# QUICK=1: WORK/results).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--dry-run" ]]; then QUICK=1; fi
QUICK=${QUICK:-0}
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
WORK=${WORK:-$(mktemp -d -t lofr_gpu.XXXXXX)}
mkdir -p "$WORK"
if [[ "${KEEP:-0}" != 1 ]]; then trap 'rm -rf "$WORK"' EXIT; fi

if [[ "$QUICK" == 1 ]]; then
  # every step, tiny: the small CNN and a narrow transformer in place of resnet50 / d 256
  DEVICE=cpu
  RESULTS=${RESULTS:-$WORK/results}
  TINY=(arch.backbone=small arch.d_model=32 arch.nhead=2 arch.enc_layers=1 arch.dec_layers=1 arch.dim_ff=64)
  COST=(--quick --configs coco-r50-256x192 --threads 1 --set "${TINY[@]}")
  N_TRAIN=${N_TRAIN:-12}; N_VAL=${N_VAL:-4}; IMAGE=(96 80)
  STEPS=${STEPS:-2}; WARMUP=${WARMUP:-1}; WORKERS=${WORKERS:-0}
  TRAIN_SET=("${TINY[@]}" data.input_size=[64,48] optim.batch_size=4 data.eval_batch_size=8 device=cpu)
else
  DEVICE=cuda
  RESULTS=${RESULTS:-benchmarks/results}
  COST=(--configs synth-cpu coco-r50-256x192 --device cuda --amp --steps 20 --warmup 5)
  N_TRAIN=${N_TRAIN:-3000}; N_VAL=${N_VAL:-300}; IMAGE=(320 256)
  STEPS=${STEPS:-300}; WARMUP=${WARMUP:-100}; WORKERS=${WORKERS:-8}
  TRAIN_SET=(device=cuda amp=auto)  # auto = bf16 autocast where supported
fi

T0=$(date +%s)
say() { echo "[gpu.sh +$(( $(date +%s) - T0 ))s] $*"; }
say "QUICK=$QUICK device=$DEVICE python=$PYTHON work=$WORK results=$RESULTS"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
if [[ "$DEVICE" == cuda ]]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true; fi

say "1/3 cost: LOFR next to the baseline"
"$PYTHON" benchmarks/cost.py "${COST[@]}" --name cost_gpu --results-dir "$RESULTS"

say "2/3 SynthPose at ${IMAGE[*]}: $N_TRAIN train / $N_VAL val images"
"$PYTHON" -m lofr.cli synth "$WORK/synth" --train "$N_TRAIN" --val "$N_VAL" --image-size "${IMAGE[@]}" \
  --workers "$(( WORKERS > 0 ? WORKERS : 1 ))" --quiet --overwrite > "$WORK/synth.log"
head -n 3 "$WORK/synth.log"

say "3/3 the COCO R50 256x192 recipe on it: $STEPS steps"
TRAIN_START=$(date +%s)
"$PYTHON" -m lofr.cli train --config coco-r50-256x192 --data "$WORK/synth" --out "$WORK/run" --quiet --overwrite \
  arch.pretrained=false max_steps="$STEPS" optim.warmup_steps="$WARMUP" data.workers="$WORKERS" eval_every=0 \
  name=gpu-recipe "${TRAIN_SET[@]}"
TRAIN_S=$(( $(date +%s) - TRAIN_START ))
EVAL_START=$(date +%s)
"$PYTHON" -m lofr.cli eval --checkpoint "$WORK/run/last.pt" --data "$WORK/synth" --device "$DEVICE" --prior --quiet \
  > "$WORK/eval.log"
cat "$WORK/eval.log"
EVAL_S=$(( $(date +%s) - EVAL_START ))

"$PYTHON" - "$WORK/run" "$RESULTS" "$TRAIN_S" "$EVAL_S" "$(( $(date +%s) - T0 ))" "$QUICK" "${IMAGE[*]}" <<'EOF'
"""Summarise the training run: steps, batch, wall, img/s, the final val metrics -> gpu_recipe.{json,md}."""
import json, sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
import torch
import yaml
from common import git_commit, machine_info, markdown_table, write_results

run, results, train_s, eval_s, wall_s, quick, image = sys.argv[1:]
cfg = yaml.safe_load((Path(run) / "config.yaml").read_text())
rec = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line.strip()][-1]
steps, batch = rec["step"], cfg["optim"]["batch_size"]
loop_s = rec["time_s"]  # the training loop plus its final evaluation
val, prior = rec["val"], rec.get("prior") or {}
keys = [k for k in ("AP", "AP50", "AP75", "AR", "PCK@0.1", "PCK@0.2", "px err") if k in val]
table = markdown_table(["", "steps x batch", "lofr train wall (s)", "loop incl. final eval (s)",
                        "img/s (>=)"] + keys,
                       [["LOFR, COCO R50 256x192 recipe", f"{steps} x {batch}", train_s, f"{loop_s:.1f}",
                         f"{steps * batch / max(loop_s, 1e-9):.1f}"] + [f"{val[k]:.3f}" for k in keys],
                        ["mean-pose prior", "", "", "", ""] + [f"{prior[k]:.3f}" if k in prior else "" for k in keys]])
device = "cuda" if torch.cuda.is_available() and cfg.get("device") == "cuda" else "cpu"
out = {"command": ("QUICK=1 " if quick == "1" else "") + "bash benchmarks/gpu.sh", "commit": git_commit(),
       "machine": machine_info(device), "wall_s": float(wall_s), "table": table, "steps": steps, "batch": batch,
       "synth_image_size_hw": image, "lofr_train_wall_s": float(train_s), "train_loop_s": loop_s,
       "lofr_eval_wall_s": float(eval_s), "val": val, "prior": prior, "config": cfg}
write_results(out, "gpu_recipe", "GPU: a few hundred steps of the COCO R50 256x192 recipe on SynthPose",
              results, "img/s (>=) = steps x batch / (training loop + its final evaluation): a lower bound, "
              "data loading included.")
print(table)
EOF
say "done in $(( $(date +%s) - T0 )) s; results in $RESULTS"
