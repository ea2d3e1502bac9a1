"""The two ways to install lofr (pip + pyproject.toml, conda + environment.yml) must agree."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_deps():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(meta["dependencies"]) | set(meta["optional-dependencies"]["dev"])


def test_environment_yml_pins_the_pyproject_dependency_set():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(p for p in pip if not p.startswith("-e")) == _pyproject_deps()


def test_torch_is_never_required_newer_than_the_capped_release():
    for dep in _pyproject_deps():
        m = re.match(r"(torch|torchvision)\s*(>=|==|~=)\s*([\d.]+)", dep)
        if m:
            cap = {"torch": (2, 14, 1), "torchvision": (0, 29, 1)}[m.group(1)]
            assert tuple(int(x) for x in m.group(3).split(".")) <= cap, dep


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, flags=re.S)
    assert len(blocks) >= 2
    main_cmd, test_cmd = blocks[0].strip(), blocks[1].strip()
    assert "lofr quickstart" in main_cmd and "pytest" in test_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text()
