"""Helpers every benchmark script shares: where the run came from and how its result is written.

A benchmark writes ``benchmarks/results/<name>.json`` (everything, machine-readable) and
``<name>.md`` (a title, the command, commit, machine and wall time, then the table)::

    from common import command_line, git_commit, machine_info, markdown_table, write_results

    out = {"command": command_line("benchmarks/cost.py", argv), "commit": git_commit(),
           "machine": machine_info(device), "wall_s": 12.3, "table": table, ...}
    write_results(out, "cost", "Cost benchmark", results_dir)

Scripts in ``benchmarks/`` import this module by its bare name (``python benchmarks/x.py`` puts
``benchmarks/`` on ``sys.path``); tests load it with importlib.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

__all__ = ["ROOT", "RESULTS", "git_commit", "cpu_model", "machine_info", "command_line", "markdown_table",
           "write_results"]


def git_commit() -> str:
    """The checkout's HEAD commit, with ``+dirty`` when tracked files differ from it; "unknown"
    outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str | torch.device = "cpu") -> dict:
    """CPU count and model, torch threads, torch / Python / OS versions, the 1-minute load average
    (other work on the machine skews CPU timings) and, on CUDA, the GPU's name and memory."""
    info = {"cpu_count": os.cpu_count(), "cpu_model": cpu_model(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(cuda_device=props.name, cuda_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda_version=torch.version.cuda)
    return info


def command_line(script: str, argv: list[str] | None = None) -> str:
    """``python <script> <args>`` as it could be pasted into a shell (``argv`` None = sys.argv[1:])."""
    args = sys.argv[1:] if argv is None else list(argv)
    return "python " + " ".join(shlex.quote(a) for a in [script, *args])


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; cells are written with ``str``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"markdown_table: a row has {len(row)} cells for {len(headers)} headers: {row}")
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def write_results(out: dict, name: str, title: str, results_dir: str | Path = RESULTS,
                  notes: str = "") -> tuple[Path, Path]:
    """Write ``out`` to ``<results_dir>/<name>.json`` and a markdown page ``<name>.md``: the title,
    the command, commit, machine and wall time (all read from ``out``), ``out["table"]`` and
    ``notes``. ``out`` needs "command", "commit", "machine", "wall_s" and "table" (KeyError naming
    the missing ones otherwise). Returns the two paths."""
    missing = [k for k in ("command", "commit", "machine", "wall_s", "table") if k not in out]
    if missing:
        raise KeyError(f"write_results({name!r}): the result lacks {missing}")
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    m = out["machine"]
    where = (f"{m.get('cpu_count')} CPUs ({m.get('cpu_model')}), torch {m.get('torch')} "
             f"({m.get('torch_threads')} threads)")
    if "cuda_device" in m:
        where += f", GPU {m['cuda_device']}"
    if "load_avg_1m" in m:
        where += f", load average {m['load_avg_1m']}"
    md = (f"# {title}\n\n`{out['command']}`\n\ncommit `{out['commit']}`; {where}; wall {out['wall_s']} s\n\n"
          f"{out['table']}\n" + (f"\n{notes.strip()}\n" if notes.strip() else ""))
    json_path, md_path = results_dir / f"{name}.json", results_dir / f"{name}.md"
    json_path.write_text(json.dumps(out, indent=1, default=float) + "\n")
    md_path.write_text(md)
    return json_path, md_path
