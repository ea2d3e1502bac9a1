"""JupyterLab in headless Chromium, for tests/test_browser.py.

``LabServer`` runs ``jupyter lab`` on 127.0.0.1 (a free port, a random token, no browser of its own,
settings / workspaces / runtime files in a scratch folder); ``chromium_driver`` drives Debian's
``chromium`` through ``chromedriver`` with Selenium (the driver path is given, so Selenium Manager
never downloads anything); ``LabNotebook`` opens a notebook there, runs all its cells and reads the
outputs off the page.

Notebooks are served from a scratch copy with their stored outputs (and saved widget state)
removed, so everything the page shows was computed by this run, and autosave cannot touch the
committed files.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DEBIAN_PACKAGES = "chromium chromium-driver"

STDERR_MIME = "application/vnd.jupyter.stderr"  # JupyterLab renders tracebacks and stderr with it


def missing_browser() -> str | None:
    """Why the browser test cannot run here (None when it can)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        return (f"{' and '.join(missing)} not found: install Debian's browser and driver "
                f"(apt-get install -y {DEBIAN_PACKAGES})")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[dev]'"
    return None


def strip_outputs(src: Path, dst: Path) -> Path:
    """Copy notebook ``src`` to ``dst`` without outputs, execution counts or saved widget state."""
    nb = json.loads(Path(src).read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb.get("metadata", {}).pop("widgets", None)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(nb, indent=1))
    return dst


def stored_image_count(nb_file: Path) -> int:
    """How many image outputs the committed notebook stores (its figures)."""
    nb = json.loads(Path(nb_file).read_text())
    return sum(1 for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
               if any(k.startswith("image/") for k in o.get("data", {})))


def _die_with_parent():
    """In the child before exec: SIGTERM it when the test process dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """``jupyter lab`` serving ``root``; use as a context manager: the server (and its kernels) is
    shut down on exit whatever happened inside."""

    def __init__(self, root: Path, scratch: Path):
        self.root, self.scratch = Path(root), Path(scratch)
        self.port, self.token = _free_port(), secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None
        self.log_file = self.scratch / "jupyter-lab.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(f"{self.base_url}/api/{path}?token={self.token}", method=method)
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self):
        """Shut down every notebook session's kernel (one notebook at a time keeps the CPUs free)."""
        for s in self.api("sessions"):
            self.api(f"sessions/{s['id']}", method="DELETE")

    def _write_settings(self, settings: Path):
        """User settings: every cell in the DOM (no windowing), no autosave, no news / update pop-ups."""
        for plugin, values in {
            "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
            "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
            "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        }.items():
            f = settings / (plugin + ".jupyterlab-settings")
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(values))

    def __enter__(self):
        self.root.mkdir(parents=True, exist_ok=True)
        for d in ("config", "data", "runtime", "settings", "workspaces"):
            (self.scratch / d).mkdir(parents=True, exist_ok=True)
        self._write_settings(self.scratch / "settings")
        env = {**os.environ, "JUPYTER_CONFIG_DIR": str(self.scratch / "config"),
               "JUPYTER_DATA_DIR": str(self.scratch / "data"),
               "JUPYTER_RUNTIME_DIR": str(self.scratch / "runtime"), "JUPYTER_PLATFORM_DIRS": "1"}
        env.pop("MPLBACKEND", None)  # the kernel must use the inline backend, as in a user's JupyterLab
        # ... and the notebooks' own feature cache (data/feature_cache), as in a user's JupyterLab: tests'
        # conftest points LOFR_FEATURE_CACHE at a tmp folder, where the kernel would rebuild it (minutes)
        env.pop("LOFR_FEATURE_CACHE", None)
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={self.root}",
               f"--LabApp.user_settings_dir={self.scratch / 'settings'}",
               f"--LabApp.workspaces_dir={self.scratch / 'workspaces'}",
               "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly"]  # nothing that reaches out to PyPI
        if os.geteuid() == 0:  # CI containers run as root
            cmd.append("--allow-root")
        self._log = open(self.log_file, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _wait_ready(self, limit: float = 180):
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.api("status")
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"jupyter lab did not answer on port {self.port}:\n{self.log()}")

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")[-4000:] if self.log_file.exists() else ""

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.shutdown_kernels()
            except OSError:
                pass  # the server is stuck: the signals below stop it
            # SIGTERM: the server shuts its kernels down; then whatever is left of its process group goes
            for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()
        return False


def chromium_driver(profile_dir: Path, log_file: Path, size=(1400, 1000)):
    """Headless Debian Chromium under /usr/bin/chromedriver. Selenium is given both paths, so it skips
    Selenium Manager (which would otherwise look for, and download, a browser and a driver)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
                 f"--window-size={size[0]},{size[1]}", f"--user-data-dir={profile_dir}"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER, log_output=str(log_file)),
                            options=opts)


# ------------------------------------------------------------------------------------ the page
# the notebook of the current (visible) tab
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"
_NB_JS = f"const NB = '{NOTEBOOK}';\n"

_PROMPTS_JS = _NB_JS + """
return Array.from(document.querySelectorAll(NB + ' .jp-CodeCell')).map(
    c => (c.querySelector('.jp-InputPrompt') || {}).textContent || '');
"""

_STDERR_JS = _NB_JS + f"""
return Array.from(document.querySelectorAll(NB + ' .jp-CodeCell')).flatMap((c, i) =>
    Array.from(c.querySelectorAll('.jp-OutputArea-output[data-mime-type="{STDERR_MIME}"]')).map(
        o => '[code cell ' + i + '] ' + (o.textContent.length > 2500 ?  // a traceback ends with its message
            o.textContent.slice(0, 500) + '\\n[...]\\n' + o.textContent.slice(-2000) : o.textContent)));
"""

_IMAGES_JS = _NB_JS + """
return Array.from(document.querySelectorAll(NB + ' .jp-OutputArea-output img')).map(
    im => [im.complete, im.naturalWidth, im.naturalHeight]);
"""


class LabNotebook:
    """One notebook open in JupyterLab."""

    def __init__(self, driver, lab: LabServer, name: str, shots: Path):
        self.driver, self.lab, self.name, self.shots = driver, lab, name, Path(shots)
        self.shots.mkdir(parents=True, exist_ok=True)
        for old in [*self.shots.glob("*.png"), self.shots / "summary.txt"]:  # an earlier run's
            old.unlink(missing_ok=True)
        self._n = 0

    def log(self, line: str):
        """Append a line to the notebook's summary.txt (next to its screenshots)."""
        with open(self.shots / "summary.txt", "a") as f:
            f.write(line + "\n")

    # -- waiting
    def wait(self, what: str, cond, limit: float = 120, poll: float = 0.5):
        """Poll ``cond()`` until it returns something truthy (returned); a generous limit only so a hang
        ends the test (with a screenshot) instead of the CI job."""
        end = time.monotonic() + limit
        while True:
            try:
                value = cond()
            except Exception:  # noqa: BLE001 - stale elements while JupyterLab redraws
                value = None
            if value:
                return value
            if time.monotonic() > end:
                self.screenshot(f"timeout-{what.replace(' ', '-')[:40]}")
                raise AssertionError(f"{self.name}: timed out after {limit:.0f} s waiting for {what} "
                                     f"(screenshots in {self.shots})")
            time.sleep(poll)

    def kernel_state(self) -> str | None:
        for s in self.lab.api("sessions"):
            if s.get("path") == self.name and s.get("kernel"):
                return s["kernel"].get("execution_state")
        return None

    # -- actions
    def open(self):
        """Open the notebook in a fresh workspace of its own (so no tab of an earlier notebook is
        restored next to it), after shutting down the kernels of earlier notebooks."""
        d = self.driver
        self.lab.shutdown_kernels()
        workspace = "".join(ch if ch.isalnum() else "-" for ch in Path(self.name).stem)
        d.get(f"{self.lab.base_url}/lab/workspaces/{workspace}/tree/{self.name}?reset&token={self.lab.token}")
        self.wait("the notebook to render", lambda: d.find_elements("css selector", NOTEBOOK + " .jp-Cell"))
        self.wait("its kernel to start", lambda: self.kernel_state() == "idle", limit=180)
        self.dismiss_dialogs()

    def dismiss_dialogs(self):
        for b in self.driver.find_elements("css selector", ".jp-Dialog .jp-mod-accept"):
            b.click()

    def menu(self, *path: str):
        """Click through the menu bar: menu("Run", "Run All Cells")."""
        d = self.driver
        top = self.wait(f"menu {path[0]}", lambda: [e for e in d.find_elements(
            "css selector", ".lm-MenuBar-itemLabel") if e.text.strip() == path[0]])
        top[0].click()
        for label in path[1:]:
            item = self.wait(f"menu item {label}", lambda label=label: [e for e in d.find_elements(
                "css selector", ".lm-Menu-itemLabel") if e.text.strip() == label and e.is_displayed()])
            item[0].click()

    def run_all(self, limit: float = 3600) -> float:
        """Run > Run All Cells, then wait until every code cell has run or one has failed (on a clean
        checkout that includes training the notebooks' cached models: hence the long limit).
        Returns the seconds it took."""
        self.menu("Run", "Run All Cells")
        d = self.driver
        t0 = time.monotonic()

        def finished():
            prompts = d.execute_script(_PROMPTS_JS)
            if not prompts or any("*" in p for p in prompts):
                return False
            if all(any(ch.isdigit() for ch in p) for p in prompts):
                return "all cells ran"
            if d.execute_script(_STDERR_JS) and self.kernel_state() == "idle":
                return "a cell failed"  # Run All stops at an error: later prompts stay empty
            return False

        self.wait("all cells to run", finished, limit=limit, poll=1)
        return time.monotonic() - t0

    # -- reading the page
    def prompts(self) -> list[str]:
        return self.driver.execute_script(_PROMPTS_JS)

    def stderr_outputs(self) -> list[str]:
        return self.driver.execute_script(_STDERR_JS)

    def images(self) -> list[tuple[bool, int, int]]:
        return [tuple(x) for x in self.driver.execute_script(_IMAGES_JS)]

    def page_text(self) -> str:
        return self.driver.find_element("css selector", NOTEBOOK).text

    # -- screenshots
    def screenshot(self, label: str, element=None) -> Path:
        self._n += 1
        label = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in label).strip("-")
        path = self.shots / f"{self._n:02d}-{label}.png"
        if element is not None:
            self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
            time.sleep(0.3)
            element.screenshot(str(path))
        else:
            self.driver.save_screenshot(str(path))
        return path

    def screenshot_outputs(self):
        """One screenshot per code cell output area (what a reader scrolls through)."""
        areas = self.driver.find_elements("css selector", NOTEBOOK + " .jp-CodeCell .jp-Cell-outputArea")
        for i, a in enumerate(areas):
            if a.size["height"] > 2:
                self.screenshot(f"output-of-code-cell-{i}", a)


def pixels(png_bytes: bytes):
    """Decoded RGB pixels of a PNG (numpy array)."""
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png_bytes)).convert("RGB"))
