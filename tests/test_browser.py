"""The notebooks in a real browser: JupyterLab in headless Chromium (Selenium + Debian's chromedriver).

nbval proves that the notebooks' cells run in a kernel; these tests prove that a reader who opens them in
JupyterLab sees what the series promises: ``00_data_and_labels`` runs and draws its figures, and the
ipywidgets explorer of ``09_explorer`` renders as widgets (the widget JavaScript matches the installed
ipywidgets), draws its picture and redraws it when the joint, the view, the stride and the decoder layer
change. The last test feeds the same checks two broken explorers and expects them to fail.

Run on their own with ``.venv/bin/python -m pytest -m browser``; they need Debian's ``chromium`` and
``chromium-driver`` (``.ci/run`` installs them) and skip with that message where they are missing.
Screenshots go to the folder printed at the start (``$LOFR_BROWSER_SHOTS`` or a pytest tmp folder).
On a clean clone 09 trains the notebooks' cached LOFR model (minutes), which the nbval pass reuses.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from browser_lab import (NOTEBOOK, LabNotebook, LabServer, chromium_driver, missing_browser, pixels,
                         stored_image_count, strip_outputs)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def lab(tmp_path_factory, request):
    """(LabServer, webdriver, screenshot folder) shared by the tests of this module; the server and the
    browser are shut down whatever happens."""
    why = missing_browser()
    if why:
        pytest.skip(why)
    env_dir = os.environ.get("LOFR_BROWSER_SHOTS")
    base = Path(env_dir) if env_dir else tmp_path_factory.mktemp("browser")
    base.mkdir(parents=True, exist_ok=True)
    capman = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        if reporter is not None:  # on the terminal whatever the capture mode
            reporter.write_line(f"browser test: screenshots and logs in {base}")
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a CI timeout's SIGTERM still runs the teardown
    try:
        with LabServer(base / "root", base / "lab") as server:
            driver = chromium_driver(base / "lab" / "chromium-profile", base / "lab" / "chromedriver.log")
            try:
                yield server, driver, base
            finally:
                driver.quit()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def open_and_run(lab, src: Path, shots_name: str | None = None) -> LabNotebook:
    """Serve a copy of ``src`` without its stored outputs, open it, run all cells and check that every
    code cell ran without an error or stderr output and that every figure was drawn."""
    server, driver, base = lab
    strip_outputs(src, server.root / src.name)
    nb = LabNotebook(driver, server, src.name, base / (shots_name or src.stem))
    nb.open()
    nb.screenshot("opened")
    seconds = nb.run_all()
    nb.screenshot("ran")
    errors = nb.stderr_outputs()
    assert not errors, f"{src.name}: error / stderr output in JupyterLab:\n" + "\n".join(errors)
    prompts = nb.prompts()
    assert prompts and all(any(ch.isdigit() for ch in p) for p in prompts), \
        f"{src.name}: not every code cell ran: {prompts}"

    def loaded():
        ims = nb.images()
        return ("loaded", ims) if all(ok and w > 0 and h > 0 for ok, w, h in ims) else None

    _, images = nb.wait("every figure to load", loaded)
    assert len(images) >= stored_image_count(src), \
        f"{src.name}: {len(images)} figures drawn, the committed notebook stores {stored_image_count(src)}"
    nb.screenshot_outputs()
    nb.log(f"{src.name}: {len(prompts)} code cells ran in {seconds:.0f} s, {len(images)} figures")
    return nb


# ------------------------------------------------------------------------------------ the explorer
_INTERACT = NOTEBOOK + " .jp-CodeCell .widget-interact"


def explorer(nb: LabNotebook, limit: float = 60):
    """The explorer's widget (the notebook's interactive), once rendered as widgets; fails with what the
    output area shows instead (e.g. "Loading widget..." or the widget's text repr)."""
    d = nb.driver

    def rendered():
        boxes = d.find_elements("css selector", _INTERACT)
        return boxes and picture(boxes[-1]) and boxes[-1]

    try:
        return nb.wait("the explorer to render as widgets with its picture", rendered, limit=limit)
    except AssertionError as e:
        cells = d.find_elements("css selector", NOTEBOOK + " .jp-CodeCell .jp-Cell-outputArea")
        shown = cells[-1].text[:600] if cells else "(no output area)"
        raise AssertionError(f"{e}\nthe last code cell's output shows instead:\n{shown}") from None


def control(box, kind: str, label: str):
    """The control of the explorer whose description is ``label`` (kind: "dropdown" or "slider")."""
    for w in box.find_elements("css selector", f".widget-{kind}"):
        if w.find_element("css selector", ".widget-label").text.strip() == label:
            return w
    found = [w.text for w in box.find_elements("css selector", ".widget-label")]
    raise AssertionError(f"no {kind} '{label}' in the explorer (its controls: {found})")


def picture(box):
    """(src, img element) of the explorer's picture once it has loaded and is shown (None before)."""
    imgs = box.find_elements("css selector", ".widget-output img")
    if not imgs:
        return None
    img = imgs[-1]
    shown = img.parent.execute_script(
        "const im = arguments[0], r = im.getBoundingClientRect();"
        "return im.complete && im.naturalWidth > 0 && r.width > 10 && r.height > 10;", img)
    return (img.get_attribute("src"), img) if shown and img.is_displayed() else None


def change_and_compare(nb: LabNotebook, box, what: str, act, limit: float = 120):
    """Do ``act()`` (a change of one control) and check that the picture is redrawn with other pixels."""
    src0, img0 = nb.wait("the explorer's picture", lambda: picture(box))
    before = pixels(img0.screenshot_as_png)
    nb.screenshot(f"picture-before-{what}", img0)
    act()

    def redrawn():
        errors = nb.stderr_outputs()
        if errors:
            return "error", errors
        p = picture(box)
        return ("picture", p) if p and p[0] != src0 else None

    try:
        kind, value = nb.wait(f"the picture to change after {what}", redrawn, limit=limit)
    except AssertionError as e:
        raise AssertionError(f"{e}: the explorer did not redraw its picture after {what}") from None
    assert kind == "picture", f"error output after {what}:\n" + "\n".join(value)
    _, img1 = value
    nb.screenshot(f"picture-after-{what}", img1)
    after = pixels(img1.screenshot_as_png)
    assert before.shape != after.shape or (before != after).any(), f"{what}: the picture's pixels did not change"
    changed = 1.0 if before.shape != after.shape else float((before != after).any(axis=-1).mean())
    nb.log(f"{what}: picture redrawn, {before.shape[1]}x{before.shape[0]} -> {after.shape[1]}x{after.shape[0]} px, "
           f"{changed:.0%} of the pixels changed")


def select_other(dropdown, choose=None):
    """Select another option of a drop-down: the first whose text contains ``choose``, else the next one."""
    from selenium.webdriver.support.ui import Select

    sel = Select(dropdown.find_element("css selector", "select"))
    texts = [o.text for o in sel.options]
    current = sel.first_selected_option.text
    if choose is None:
        target = texts[(texts.index(current) + 1) % len(texts)]
    else:
        matches = [t for t in texts if choose in t and t != current]
        assert matches, f"no option containing {choose!r} besides the current {current!r}: {texts}"
        target = matches[0]
    assert target != current, f"the drop-down offers one option only: {texts}"
    return lambda: sel.select_by_visible_text(target), target


def check_explorer(nb: LabNotebook, redraw_limit: float = 120):
    """The explorer renders as widgets, draws its picture, and redraws it with other pixels when the joint,
    the view (to the decoder cross-attention), the stride and the decoder layer change."""
    from selenium.webdriver.common.keys import Keys

    box = explorer(nb, limit=redraw_limit)
    text = nb.page_text()
    assert "Loading widget" not in text and "interactive(children=" not in text, \
        "a widget shows as text instead of rendering"
    nb.screenshot("explorer", box)
    for label in ("joint", "view", "stride"):
        act, target = select_other(control(box, "dropdown", label), "attention" if label == "view" else None)
        change_and_compare(nb, box, f"{label} -> {target}", act, redraw_limit)
    handle = control(box, "slider", "decoder layer").find_element("css selector", ".noUi-handle")
    low, high, now = (float(handle.get_attribute(a)) for a in ("aria-valuemin", "aria-valuemax", "aria-valuenow"))
    assert high > low, "the decoder-layer slider has one position only"
    key = Keys.ARROW_LEFT if now > low else Keys.ARROW_RIGHT
    change_and_compare(nb, box, "decoder layer", lambda: handle.send_keys(key), redraw_limit)
    nb.screenshot("explorer-after-changes", box)


# ------------------------------------------------------------------------------------ the tests
def test_data_notebook_runs_in_jupyterlab(lab):
    open_and_run(lab, NOTEBOOKS / "00_data_and_labels.ipynb")


def test_explorer_renders_and_redraws_in_jupyterlab(lab):
    nb = open_and_run(lab, NOTEBOOKS / "09_explorer.ipynb")
    check_explorer(nb)


_FAKE_EXPLORER = '''\
import ipywidgets as widgets
import matplotlib.pyplot as plt

def draw(joint, view, stride, layer):
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.set_title(f"{JOINT(joint)} {view} {stride} {layer}")
    ax.plot([0, 1], [0, stride * (layer + 1)])
    plt.show()

ui = widgets.interactive(
    draw, joint=widgets.Dropdown(options=["left_wrist", "right_wrist"], description="joint"),
    view=widgets.Dropdown(options=["fused response map", "decoder cross-attention"], description="view"),
    stride=widgets.Dropdown(options=[4, 8], description="stride"),
    layer=widgets.IntSlider(value=1, min=0, max=1, description="decoder layer"))
'''


@pytest.mark.parametrize("name, joint, last_line, expected", [
    pytest.param("joint_ignored", "lambda j: 'a joint'", "ui", "did not redraw its picture after joint",
                 id="joint-ignored"),
    pytest.param("repr_shown", "str", "print(repr(ui))", "render as widgets",  # its text, not the widget
                 id="repr-shown"),
])
def test_the_explorer_check_fails_on_a_broken_explorer(lab, tmp_path, name, joint, last_line, expected):
    """A tiny stand-in for the explorer, broken two ways: the checks above must fail on it."""
    import nbformat

    nb_file = tmp_path / f"broken_explorer_{name}.ipynb"
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(f"JOINT = {joint}\n" + _FAKE_EXPLORER), nbformat.v4.new_code_cell(last_line)]
    nbformat.write(nb, nb_file)
    page = open_and_run(lab, nb_file, shots_name=f"broken-{name}")
    with pytest.raises(AssertionError, match=expected):
        check_explorer(page, redraw_limit=15)
