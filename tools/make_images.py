"""Regenerate ``docs/img/`` from the notebooks' stored outputs.

    .venv/bin/python tools/make_images.py           # write every image listed in IMAGES
    .venv/bin/python tools/make_images.py --check   # exit 1 if an image differs from its notebook's figure

Each picture in ``docs/img/`` is one figure a notebook drew, copied byte for byte from the notebook's
stored output (the PNG that Jupyter stored), so the README and ``notebooks/README.md`` show exactly what
the notebook shows now. ``IMAGES`` names, for every image, the notebook, a piece of the source of the cell
that draws it (unique in that notebook: cell numbers move when cells are added) and which of that cell's
figures it is. ``tests/test_docs.py`` runs the check: re-executing a notebook without running this script
fails it.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
IMG_DIR = REPO / "docs" / "img"

# image file -> (notebook, a unique piece of the drawing cell's source, index of the figure in that cell)
IMAGES: dict[str, tuple[str, str, int]] = {
    "00_data_and_labels.png": ("00_data_and_labels.ipynb", "three ways to fill what lies outside the image", 0),
    "01_cam.png": ("01_cam.ipynb", "CAMs M_c (Eq. 1), truth (o) and CAM arg-max (x)", 0),
    "02_transformer_baseline.png": ("02_transformer_baseline.ipynb", "baseline response maps (last decoder", 0),
    "03_spe_and_multiscale_encoder.png": ("03_spe_and_multiscale_encoder.ipynb",
                                          "encoder self-attention (last layer, mean over heads)", 0),
    "04_reppg.png": ("04_reppg.ipynb", "prototype inner-product matrices", 0),
    "05_decoder_pdc_full_model.png": ("05_decoder_pdc_full_model.ipynb", "LOFR response per scale and fused", 0),
    "06_ablations.png": ("06_ablations.ipynb", "PCK gain over the Baseline", 0),
    "07_semi_weak.png": ("07_semi_weak.ipynb", "fig = plot_fractions(", 0),
    "08_full_scale.png": ("08_full_scale.ipynb", "CrowdPose fixture: the checker's sample", 0),
    "09_explorer.png": ("09_explorer.ipynb", "for ax, view in zip(axes, VIEWS):", 0),
    "10_what_localises.png": ("10_what_localises.ipynb", "the paper's reading (top) and part logits (bottom)", 0),
}


def stored_figures(notebook: Path, marker: str) -> list[bytes]:
    """The PNG figures stored as outputs of the one code cell of ``notebook`` whose source contains
    ``marker``, in output order. ValueError when no cell or more than one contains it."""
    nb = json.loads(notebook.read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code" and marker in "".join(c["source"])]
    if len(cells) != 1:
        raise ValueError(f"{notebook.name}: {len(cells)} code cells contain {marker!r} (need exactly one)")
    return [base64.b64decode(o["data"]["image/png"]) for o in cells[0].get("outputs", [])
            if "image/png" in o.get("data", {})]


def figure_for(name: str, notebooks: Path = NOTEBOOKS) -> bytes:
    """The stored PNG that ``docs/img/<name>`` must equal."""
    notebook, marker, k = IMAGES[name]
    figures = stored_figures(notebooks / notebook, marker)
    if k >= len(figures):
        raise ValueError(f"{notebook}: the cell containing {marker!r} stores {len(figures)} figure(s), "
                         f"not the {k + 1}th (run the notebook)")
    return figures[k]


def stale_images(img_dir: Path = IMG_DIR, notebooks: Path = NOTEBOOKS) -> list[str]:
    """What is wrong with ``img_dir``: images that differ from (or lack) their notebook figure, and
    images that no notebook figure produces. [] when everything matches."""
    problems = []
    for name in IMAGES:
        path = img_dir / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.read_bytes() != figure_for(name, notebooks):
            problems.append(f"{name}: differs from {IMAGES[name][0]}'s stored figure")
    problems += [f"{p.name}: not made by tools/make_images.py (no entry in IMAGES)"
                 for p in sorted(img_dir.glob("*.png")) if p.name not in IMAGES]
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale_images()
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    IMG_DIR.mkdir(parents=True, exist_ok=True)
    for name, (notebook, marker, k) in IMAGES.items():
        data = figure_for(name)
        path = IMG_DIR / name
        changed = not path.is_file() or path.read_bytes() != data
        path.write_bytes(data)
        print(f"{'wrote    ' if changed else 'unchanged'} docs/img/{name}  <- {notebook}, figure {k + 1} of the cell "
              f"with {marker!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
