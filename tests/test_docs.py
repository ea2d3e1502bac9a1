"""The documentation and the stored notebooks, as a reader meets them.

* ``docs/img/`` holds exactly the figures ``tools/make_images.py`` extracts from the notebooks' stored
  outputs, byte for byte: re-executing a notebook without regenerating its picture fails here;
* every stored notebook ran top to bottom in one fresh kernel (execution counts 1, 2, 3, ... over its
  code cells), so its outputs belong together;
* nothing stored names the machine it ran on (an absolute path);
* user-facing text (README, docs, the notebooks' prose) carries no tracker numbers, work-log words or
  commit hashes;
* the README opens with its two commands, and shows a picture and a sample of the main job's output
  on its first screen.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
README = REPO / "README.md"
PROSE = [README, REPO / "notebooks" / "README.md", REPO / "benchmarks" / "README.md",
         *sorted((REPO / "docs").glob("*.md"))]


def _make_images():
    spec = importlib.util.spec_from_file_location("make_images", REPO / "tools" / "make_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cells(path: Path, kind: str | None = None) -> list[dict]:
    cells = json.loads(path.read_text())["cells"]
    return [c for c in cells if kind is None or c["cell_type"] == kind]


def test_every_image_in_docs_img_is_its_notebooks_stored_figure():
    assert _make_images().stale_images() == [], "run .venv/bin/python tools/make_images.py"


def test_the_image_check_fails_on_a_stale_or_unlisted_image(tmp_path):
    mk = _make_images()
    for name in mk.IMAGES:
        (tmp_path / name).write_bytes(mk.figure_for(name))
    assert mk.stale_images(tmp_path) == []
    first = next(iter(mk.IMAGES))
    (tmp_path / first).write_bytes(mk.figure_for(first)[:-1] + b"\0")  # one byte off
    (tmp_path / "pasted.png").write_bytes(b"\x89PNG")
    problems = mk.stale_images(tmp_path)
    assert any(p.startswith(first) and "differs" in p for p in problems), problems
    assert any(p.startswith("pasted.png") for p in problems), problems
    (tmp_path / first).unlink()
    assert any(p.startswith(first) and "missing" in p for p in mk.stale_images(tmp_path))


def test_the_image_table_names_one_cell_each():
    mk = _make_images()
    with pytest.raises(ValueError, match="exactly one"):
        mk.stored_figures(REPO / "notebooks" / "01_cam.ipynb", "import")  # in several cells


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_code_cell_was_executed_in_order(path):
    counts = [c.get("execution_count") for c in _cells(path, "code") if "".join(c["source"]).strip()]
    assert counts == list(range(1, len(counts) + 1)), \
        f"{path.name}: execution counts {counts}; re-execute it top to bottom (docs/testing.md)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_stored_output_names_the_machine_it_ran_on(path):
    absolute = re.compile(r"(?<![\w.~])/(?:work|home|root|tmp|Users|mnt|opt|var)/")
    for i, cell in enumerate(_cells(path)):
        for out in cell.get("outputs", []):
            text = "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
            text += "".join(out.get("data", {}).get("text/markdown", "")) + "".join(out.get("traceback", []))
            assert not absolute.search(text), f"{path.name}, cell {i}: an absolute path: {absolute.search(text)}"


WORK_LOG = re.compile(r"\b(?:issue|session|PR|pull request)s?\s*#?\d+|\bearlier sessions?\b|\bsession note\b",
                      re.IGNORECASE)
HASH = re.compile(r"(?<![\w/.-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}(?![\w/-])")


def _prose() -> list[tuple[str, str]]:
    out = [(p.relative_to(REPO).as_posix(), p.read_text()) for p in PROSE]
    for path in NOTEBOOKS:
        for i, cell in enumerate(_cells(path)):
            out.append((f"{path.name} cell {i}", "".join(cell["source"])))
    return out


def test_user_facing_text_has_no_tracker_numbers_work_log_or_commit_hashes():
    found = []
    for where, text in _prose():
        found += [f"{where}: {m.group(0)!r}" for m in WORK_LOG.finditer(text)]
        found += [f"{where}: {m.group(0)!r} (a commit hash?)" for m in HASH.finditer(text)]
    assert not found, "\n".join(found)


def _fenced(lines: list[str]) -> list[tuple[str, str]]:
    """(language, body) of every complete fenced code block in ``lines``."""
    blocks, lang, body = [], None, []
    for line in lines:
        if line.startswith("```"):
            if lang is None:
                lang, body = line[3:].strip(), []
            else:
                blocks.append((lang, "\n".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def test_the_readme_leads_with_its_commands_a_picture_and_the_main_jobs_output():
    lines = README.read_text().splitlines()
    assert len(lines) < 150, f"README.md has {len(lines)} lines: depth belongs in docs/ and benchmarks/README.md"
    text = "\n".join(lines)
    blocks = [body for lang, body in _fenced(lines) if lang == "bash"]
    assert blocks[:2] == [
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/lofr quickstart",
        'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/python -m pytest -n 2',
    ]
    first_screen = "\n".join(lines[:60])
    assert re.search(r'<img src="docs/img/[^"]+\.png"|!\[[^\]]*\]\(docs/img/[^)]+\.png\)', first_screen)
    samples = [body for lang, body in _fenced(lines[:60]) if not lang]  # plain blocks: output, not commands
    assert any("mean-pose prior" in b and "PCK@0.1" in b for b in samples), "no sample of the main job's table"
    for link in re.findall(r'(?:src="|\]\()((?:docs|notebooks|benchmarks)/[^")#]+)', text):
        assert (REPO / link).exists(), f"README links to {link}, which does not exist"
