"""Order and scheduling of the whole suite (tests/ and the nbval notebooks).

The notebooks run first, in order, then the browser test (tests/test_browser.py), then the rest of tests/.
The notebooks share what they train (data/notebook_cache: 01's LOFR is reused by 03-06 and 09) and the
backbone feature cache, so they must run one after the other in one process; the browser test opens
notebooks 00 and 09 again in JupyterLab and, run after them, finds SynthPose, the cached model and the
feature cache ready instead of building them a second time (about 5 minutes on 2 cores).

With pytest-xdist (``-n 2``, the README's test command) the notebooks and the browser test are one work
unit, sent to one worker in this order, while the other worker runs tests/: the notebooks train on one
torch thread (the ``cpu-small`` profile), so the second core is free. (xdist's own ``--dist loadgroup``
does not group under pytest 9.2, whose node ids no longer read the ``_nodeid`` it rewrites; the
scheduler below groups by node id instead.)
"""

from __future__ import annotations

import pytest

NOTEBOOK_UNIT = "notebooks (in order) + tests/test_browser.py"


def _in_notebook_unit(nodeid: str) -> bool:
    return nodeid.startswith("notebooks/") or nodeid.startswith("tests/test_browser.py")


def pytest_collection_modifyitems(config, items):
    notebooks = [i for i in items if i.nodeid.startswith("notebooks/")]
    browser = [i for i in items if _in_notebook_unit(i.nodeid) and not i.nodeid.startswith("notebooks/")]
    rest = [i for i in items if not _in_notebook_unit(i.nodeid)]
    items[:] = notebooks + browser + rest


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: ignored where xdist is not installed
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class NotebooksOnOneWorker(LoadScopeScheduling):
        """xdist's per-module scheduling, except that every notebook and the browser test form one unit."""

        def _split_scope(self, nodeid: str) -> str:
            return NOTEBOOK_UNIT if _in_notebook_unit(nodeid) else super()._split_scope(nodeid)

    return NotebooksOnOneWorker(config, log)
