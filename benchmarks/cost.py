"""What LOFR costs next to the paper's baseline, measured in the same run.

For each config (``synth-cpu``, ``coco-r50-256x192``; ``arch.pretrained=false`` always: nothing is
downloaded) both models are built from the config with ``lofr.engine.trainer.build_model`` and
measured one after the other:

    params        trainable + frozen parameters
    GMACs/img     forward multiply-accumulates per image, eval mode, batch 1 (see "FLOP convention")
    train img/s   fwd + bwd + Adam step (``trainer.train_step``: the config's loss, param groups,
                  grad clipping, AMP) at the config's batch size, after warm-up steps, over at
                  least ``--steps`` steps and ``--min-time`` seconds (the same for inference)
    infer img/s   ``model.predict`` (forward + arg-max decoding), eval mode, no_grad, batch 1 and 32
    train / infer mem   peak working memory of a training step (config's batch) / of inference
                  at the largest inference batch (see "memory convention")

and a third row per config, ``LOFR / Baseline``: LOFR's cost over the baseline's (> 1 = LOFR costs
more). For the throughput columns that is the time per image, baseline img/s / LOFR img/s.

FLOP convention. ``torch.utils.flop_counter.FlopCounterMode`` counts matrix products,
convolutions and attention (2 FLOPs per multiply-add; element-wise ops, norms, softmax, biases
and the arg-max are not counted). We report its count / 2 = MACs, the unit HRNet / mmpose /
most pose papers call "GFLOPs", and its raw count as GFLOPs (= 2 x GMACs). CPU attention
(``aten._scaled_dot_product_flash_attention_for_cpu``) has no formula in torch's counter; we
register torch's own ``sdpa_flop_count`` for it.

Memory convention. The peak memory a step needs on top of the model's weights and the input batch
(gradients, Adam moments created at the first step, activations, workspaces). CUDA:
``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` before the measured loop (the
tensors PyTorch holds, not the allocator's cache). CPU: torch has no allocator statistics, so each
measurement runs in its own subprocess: after one step at batch 1 (which loads what a first call
loads: kernels, oneDNN code, lazily imported libraries), the peak resident set size is reset
(Linux ``/proc/self/clear_refs``) and the result is the peak (``VmHWM``) over two steps at the
measured batch minus the resident size just before them (``VmRSS``). Elsewhere it falls back to the
``resource.getrusage`` ``ru_maxrss`` delta, which can read too low: ru_maxrss survives ``exec`` and
may still hold the parent's peak. The allocator may reuse pages the batch-1 step freed (too low by
a little) or keep pages it no longer uses: CPU numbers are approximate (+- a few MiB).

Training throughput runs on synthetic tensors (random images and labels of the config's shapes)
already in device memory: it measures the model and the optimiser, not JPEG decoding and
augmentation (``benchmarks/gpu.sh`` times real data loading through ``lofr train``).

    python benchmarks/cost.py                                   # both configs, CPU (the COCO recipe's
                                                                # batch-128 steps at 256x192 take minutes
                                                                # each on 2 cores: add --train-batch 8)
    python benchmarks/cost.py --configs synth-cpu               # ~1-2 min on 2 cores
    python benchmarks/cost.py --device cuda --amp               # GPU, bf16 autocast
    python benchmarks/cost.py --quick --configs synth-cpu       # a smoke run: tiny sizes, 2 steps

Writes ``benchmarks/results/<name>.{json,md}`` (``--name``, default ``cost``) with the command, git
commit, machine (CPU, torch, GPU) and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, command_line, git_commit, machine_info, markdown_table, write_results  # noqa: E402

MODELS = (("baseline", "Baseline"), ("lofr", "LOFR"))
CONFIGS = ("synth-cpu", "coco-r50-256x192")
QUICK_SET = ["data.input_size=[64,48]"]  # --quick: every config at the synth-cpu input size
COLUMNS = ("params_m", "gmacs", "gflops", "train_ips", "infer_ips_b1", "infer_ips_bN", "train_mem_mib",
           "infer_mem_mib")
THROUGHPUT = ("train_ips", "infer_ips_b1", "infer_ips_bN")


# ---------------------------------------------------------------------------------------------- building
def build(config: str, model: str, overrides: list[str], device: torch.device):
    """The TrainConfig ``config`` with ``model=<model>``, ``arch.pretrained=false`` and the
    overrides, and its model on ``device``. -> (cfg, model)."""
    from lofr.engine.config import load_config
    from lofr.engine.trainer import build_model

    cfg = load_config(config, ["arch.pretrained=false", "data.cache_views=0", *overrides, f"model={model}"])
    torch.manual_seed(0)
    return cfg, build_model(cfg).to(device)


def synthetic_batch(cfg, num_keypoints: int, batch: int, device: torch.device) -> dict:
    """Random tensors shaped like ``lofr.data.topdown.collate``'s output: image (B, 3, H, W),
    labels (B, C) in {0, 1}, heatmaps (B, C, H/4, W/4), target_weight (B, C), has_location (B,)."""
    h, w = cfg.data.input_size
    g = torch.Generator().manual_seed(0)
    batch_ = {"image": torch.randn(batch, 3, h, w, generator=g),
              "labels": (torch.rand(batch, num_keypoints, generator=g) < 0.7).float(),
              "heatmaps": torch.zeros(batch, num_keypoints, h // 4, w // 4),
              "target_weight": torch.ones(batch, num_keypoints),
              "has_location": torch.ones(batch, dtype=torch.bool)}
    return {k: v.to(device) for k, v in batch_.items()}


def resolve_amp(device: torch.device, amp: bool) -> str:
    """--amp -> "bf16" on CUDA cards that support it, else "fp16"; "off" without --amp or off CUDA
    (``lofr.engine.runtime.autocast`` only acts on CUDA)."""
    if not amp or device.type != "cuda":
        return "off"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------- counting
def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of CPU attention (shapes in, as torch's counter passes them): torch's own formula."""
    return sdpa_flop_count(query, key, value)


_CUSTOM_FLOPS = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _CUSTOM_FLOPS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops


def count_macs(module: torch.nn.Module, *inputs) -> int:
    """Multiply-accumulates of one forward ``module(*inputs)``: FlopCounterMode's count / 2 (it counts
    2 FLOPs per multiply-add of matmuls, convolutions and attention; nothing else). E.g.
    ``nn.Linear(3, 5)`` on a (2, 3) input: 2 * 3 * 5 = 30 MACs (the bias is not counted).
    Not under no_grad: FlopCounterMode's module tracker fails there on our model (torch 2.x asserts
    "Expected gradient function to be set"); without a backward only the forward is counted."""
    with FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS) as counter:
        module(*inputs)
    flops = counter.get_total_flops()
    if flops % 2:
        raise ValueError(f"count_macs: FlopCounterMode gave an odd FLOP count {flops}: not 2 per MAC")
    return flops // 2


def macs_per_image(model: torch.nn.Module, input_size, device: torch.device) -> int:
    """Forward MACs of ``model`` on one (1, 3, H, W) image in eval mode."""
    model.eval()
    return count_macs(model, torch.zeros(1, 3, *input_size, device=device))


# ---------------------------------------------------------------------------------------------- timing
def train_setup(cfg, model: torch.nn.Module, amp: str) -> tuple:
    """(criterion, optimiser, scaler) as ``trainer.train`` makes them: the config's loss weights
    (Baseline: final BCE only), Adam over the trainer's param groups, an AMP scaler (fp16 only)."""
    from lofr.engine.trainer import param_groups, loss_weights
    from lofr.models.losses import LOFRCriterion

    criterion = LOFRCriterion(loss_weights(cfg, model))
    opt_cls = torch.optim.AdamW if cfg.optim.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(param_groups(model, cfg.optim), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    return criterion, optimizer, torch.amp.GradScaler("cuda", enabled=amp == "fp16")


def run_train(cfg, model, setup: tuple, batch: dict, steps: int, device: torch.device, amp: str) -> float:
    """``steps`` calls of ``trainer.train_step`` on ``batch`` with ``setup`` = :func:`train_setup`'s
    (criterion, optimiser, scaler); -> seconds (synchronised)."""
    from lofr.engine.trainer import train_step

    criterion, optimizer, scaler = setup
    model.train()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(model, criterion, optimizer, scaler, batch, device, amp, cfg.optim.grad_clip, where="cost.py")
    _sync(device)
    return time.perf_counter() - t0


def run_infer(model, images: torch.Tensor, steps: int, device: torch.device, amp: str) -> float:
    """``steps`` calls of ``model.predict(images)`` in eval mode under no_grad; -> seconds."""
    from lofr.engine.runtime import autocast

    model.eval()
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad(), autocast(device, amp):
        for _ in range(steps):
            model.predict(images)
    _sync(device)
    return time.perf_counter() - t0


def timed(run, steps: int, min_time: float) -> tuple[int, float]:
    """Call ``run(steps)`` (-> seconds) until at least ``min_time`` seconds have been timed;
    -> (steps done, seconds). Fast cases (batch-1 inference) then get enough repetitions."""
    n, seconds = 0, 0.0
    while n == 0 or seconds < min_time:
        seconds += run(steps)
        n += steps
    return n, seconds


def measure_train(cfg, model, batch_size: int, steps: int, warmup: int, device: torch.device, amp: str,
                  min_time: float = 0.0) -> dict:
    """Training images/s over >= ``steps`` steps and >= ``min_time`` s after ``warmup`` steps; on
    CUDA also the peak working memory (MiB)."""
    batch = synthetic_batch(cfg, model.num_keypoints, batch_size, device)
    setup = train_setup(cfg, model, amp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    run_train(cfg, model, setup, batch, warmup, device, amp)  # the first step creates Adam's moments
    out = {}
    if device.type == "cuda":
        out["mem_mib"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    n, seconds = timed(lambda k: run_train(cfg, model, setup, batch, k, device, amp), steps, min_time)
    out["ips"] = n * batch_size / seconds
    return out


def measure_infer(cfg, model, batch_size: int, steps: int, warmup: int, device: torch.device, amp: str,
                  min_time: float = 0.0) -> dict:
    """Inference images/s (``predict``) over >= ``steps`` calls and >= ``min_time`` s after
    ``warmup`` calls; on CUDA also the peak working memory."""
    images = torch.randn(batch_size, 3, *cfg.data.input_size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    run_infer(model, images, warmup, device, amp)
    out = {}
    if device.type == "cuda":
        out["mem_mib"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    n, seconds = timed(lambda k: run_infer(model, images, k, device, amp), steps, min_time)
    out["ips"] = n * batch_size / seconds
    return out


# ---------------------------------------------------------------------------------------------- CPU memory
def _proc_status_mib(field: str) -> float | None:
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak) from Linux's /proc/self/status; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Linux: set this process's peak RSS (VmHWM) to its current RSS (``/proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _maxrss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB on Linux


def child_memory(spec: dict) -> dict:
    """In a fresh process: build the model, run one step of ``spec["kind"]`` at batch 1 (it loads
    the kernels and libraries a first call loads; a throw-away optimiser for "train"), then 2
    training steps ("train") or 2 ``predict`` calls ("infer") at ``spec["batch"]``;
    -> peak RSS during those over the RSS just before them (MiB)."""
    import gc

    torch.set_num_threads(spec["threads"])
    device = torch.device("cpu")
    cfg, model = build(spec["config"], spec["model"], spec["overrides"], device)

    def go(batch_size: int) -> None:
        if spec["kind"] == "train":
            batch = synthetic_batch(cfg, model.num_keypoints, batch_size, device)
            run_train(cfg, model, train_setup(cfg, model, "off"), batch, 2, device, "off")
        else:
            run_infer(model, torch.randn(batch_size, 3, *cfg.data.input_size), 2, device, "off")

    go(1)
    model.zero_grad(set_to_none=True)
    gc.collect()
    if _reset_peak_rss() and _proc_status_mib("VmRSS") is not None:
        method = "VmHWM after clear_refs - VmRSS"
        before = _proc_status_mib("VmRSS")
        go(spec["batch"])
        peak = _proc_status_mib("VmHWM")
    else:  # ru_maxrss survives exec: it may still hold the parent's peak, so this can be too low
        method = "ru_maxrss delta"
        before = _maxrss_mib()
        go(spec["batch"])
        peak = _maxrss_mib()
    return {"mem_mib": max(peak - before, 0.0), "peak_rss_mib": peak, "rss_before_mib": before, "method": method}


def cpu_memory(config: str, model: str, overrides: list[str], kind: str, batch: int, threads: int) -> dict:
    """Run :func:`child_memory` in a subprocess (``cost.py --child-memory JSON``) and return its result."""
    spec = json.dumps({"config": config, "model": model, "overrides": overrides, "kind": kind, "batch": batch,
                       "threads": threads})
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child-memory", spec],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if proc.returncode != 0:
        raise RuntimeError(f"cost.py memory subprocess for {config} / {model} / {kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- one row
def measure(config: str, model_kind: str, args, device: torch.device, amp: str) -> dict:
    """Every column for one (config, model)."""
    cfg, model = build(config, model_kind, args.set, device)
    train_batch = args.train_batch or cfg.optim.batch_size
    big = args.infer_batch
    row = {"config": config, "model": model_kind, "input_size": list(cfg.data.input_size),
           "train_batch": train_batch, "infer_batch": big,
           "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    macs = macs_per_image(model, cfg.data.input_size, device)
    row.update(gmacs=macs / 1e9, gflops=2 * macs / 1e9)
    tr = measure_train(cfg, model, train_batch, args.steps, args.warmup, device, amp, args.min_time)
    b1 = measure_infer(cfg, model, 1, args.steps, args.warmup, device, amp, args.min_time)
    bn = measure_infer(cfg, model, big, args.steps, args.warmup, device, amp, args.min_time)
    row.update(train_ips=tr["ips"], infer_ips_b1=b1["ips"], infer_ips_bN=bn["ips"])
    if device.type == "cuda":
        row.update(train_mem_mib=tr["mem_mib"], infer_mem_mib=bn["mem_mib"])
    else:
        threads = torch.get_num_threads()
        for kind, b in (("train", train_batch), ("infer", big)):
            mem = cpu_memory(config, model_kind, args.set, kind, b, threads)
            row[f"{kind}_mem_mib"] = mem["mem_mib"]
            row[f"{kind}_rss_mib"] = {"before": mem["rss_before_mib"], "peak": mem["peak_rss_mib"],
                                      "method": mem["method"]}
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def ratio(lofr: dict, base: dict) -> dict:
    """LOFR's cost over the baseline's for every column: for throughputs the time per image
    (baseline img/s / LOFR img/s), for the rest LOFR / baseline. > 1 = LOFR costs more."""
    out = {}
    for c in COLUMNS:
        num, den = (base[c], lofr[c]) if c in THROUGHPUT else (lofr[c], base[c])
        out[c] = num / den if den else float("nan")
    return out


# ---------------------------------------------------------------------------------------------- table
def format_table(results: dict, infer_batch: int) -> str:
    """One markdown table: per config, the Baseline row, the LOFR row and the LOFR / Baseline row."""
    headers = ["config", "model", "input", "params (M)", "GMACs/img", "GFLOPs/img", "train img/s (batch)",
               "infer img/s b1", f"infer img/s b{infer_batch}", "train mem (MiB)", f"infer mem b{infer_batch} (MiB)"]
    rows = []
    for config, res in results.items():
        for key, label in MODELS:
            r = res[key]
            rows.append([config, label, "x".join(map(str, r["input_size"])), f"{r['params_m']:.2f}",
                         f"{r['gmacs']:.3f}", f"{r['gflops']:.3f}", f"{r['train_ips']:.1f} ({r['train_batch']})",
                         f"{r['infer_ips_b1']:.1f}", f"{r['infer_ips_bN']:.1f}", f"{r['train_mem_mib']:.0f}",
                         f"{r['infer_mem_mib']:.0f}"])
        q = res["ratio"]
        rows.append([config, "**LOFR / Baseline**", ""] + [f"{q[c]:.2f}x" for c in COLUMNS])
    return markdown_table(headers, rows)


NOTES = """\
Ratio rows: LOFR's cost over the baseline's (> 1 = LOFR costs more); for the img/s columns the time
per image (baseline img/s / LOFR img/s). GMACs = multiply-accumulates of one forward pass at batch 1
(what pose papers call "GFLOPs"); GFLOPs = torch's FlopCounterMode count = 2 x GMACs (matmuls,
convolutions, attention only). Memory = peak working memory of a step above the weights and the
input batch: CUDA max_memory_allocated delta; CPU peak-RSS delta in a fresh subprocess
(approximate). Training runs on synthetic tensors (no data loading); inference = model.predict under
no_grad in eval mode. See the docstring of benchmarks/cost.py."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), help="config names or YAML paths")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 10; --quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; --quick 1)")
    p.add_argument("--min-time", type=float, default=None,
                   help="repeat the timed steps until this many seconds are timed (default 2; --quick 0)")
    p.add_argument("--train-batch", type=int, default=None, help="training batch (default: the config's; --quick 4)")
    p.add_argument("--infer-batch", type=int, default=None, help="the large inference batch (default 32; --quick 4)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:1 ...")
    p.add_argument("--amp", action="store_true", help="autocast (bf16 where supported, else fp16); CUDA only")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every config")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 64x48 input for every config, batch 4, 1 warm-up + 2 timed steps")
    p.add_argument("--name", default="cost", help="result file name (default cost)")
    p.add_argument("--results-dir", default=str(RESULTS))
    p.add_argument("--child-memory", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q = args.quick
    args.steps = args.steps if args.steps is not None else (2 if q else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 3)
    args.min_time = args.min_time if args.min_time is not None else (0.0 if q else 2.0)
    args.train_batch = args.train_batch or (4 if q else None)
    args.infer_batch = args.infer_batch or (4 if q else 32)
    args.set = (QUICK_SET if q else []) + list(args.set)
    if args.steps < 1 or args.warmup < 1:
        p.error("--steps and --warmup must be >= 1 (the warm-up creates Adam's state)")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child_memory:
        print(json.dumps(child_memory(json.loads(args.child_memory))))
        return {}
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("cost.py: --device cuda but torch sees no CUDA device")
    amp = resolve_amp(device, args.amp)
    t_start = time.perf_counter()
    results = {}
    for config in args.configs:
        res = {}
        for key, label in MODELS:
            t0 = time.perf_counter()
            res[key] = measure(config, key, args, device, amp)
            r = res[key]
            print(f"{config} {label}: {r['params_m']:.2f} M params, {r['gmacs']:.3f} GMACs/img, train "
                  f"{r['train_ips']:.1f} img/s, infer {r['infer_ips_b1']:.1f} / {r['infer_ips_bN']:.1f} img/s "
                  f"(b1 / b{args.infer_batch}), mem {r['train_mem_mib']:.0f} / {r['infer_mem_mib']:.0f} MiB "
                  f"[{time.perf_counter() - t0:.0f} s]", flush=True)
        res["ratio"] = ratio(res["lofr"], res["baseline"])
        results[config] = res
    wall = time.perf_counter() - t_start
    table = format_table(results, args.infer_batch)
    out = {"command": command_line("benchmarks/cost.py", argv), "commit": git_commit(),
           "machine": machine_info(device), "wall_s": round(wall, 1), "device": str(device), "amp": amp,
           "steps": args.steps, "warmup": args.warmup, "min_time_s": args.min_time,
           "infer_batch": args.infer_batch, "overrides": args.set,
           "quick": args.quick, "results": results, "table": table,
           "conventions": {"macs": "FlopCounterMode total / 2, forward, eval mode, batch 1",
                           "gflops": "FlopCounterMode total (2 per MAC) / 1e9",
                           "memory": "CUDA: max_memory_allocated - memory_allocated before; "
                                     "CPU: VmHWM (reset by /proc/self/clear_refs) - VmRSS before, in a subprocess "
                                     "per measurement, after a batch-1 warm-up step",
                           "ratio": "LOFR cost / Baseline cost; throughput columns: baseline img/s / LOFR img/s"}}
    json_path, _ = write_results(out, args.name, "Cost: LOFR next to the baseline", args.results_dir, NOTES)
    print(table)
    print(f"wall time {wall:.0f} s; written to {json_path.with_suffix('')}.{{json,md}}")
    return out


if __name__ == "__main__":
    main()
