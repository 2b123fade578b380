"""The layer contract ([tool.importlinter] in pyproject.toml) holds: imports only run down.

import-linter (grimp) finds a package's modules by walking its folder, and ``data/``,
``sim/``, ... are mapped into ``drivegpt`` by setuptools ``package-dir``, so the test lints
an installed-layout copy of the sources (the same mapping, read from pyproject.toml), as a
wheel would lay them out.
"""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def installed_layout(dest: Path) -> Path:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]
    mapping = tool["setuptools"]["package-dir"]
    for name in sorted(mapping, key=lambda n: n.count(".")):  # drivegpt first, then drivegpt.data, ...
        target = dest.joinpath(*name.split("."))
        shutil.copytree(ROOT / mapping[name], target, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def lint(site: Path) -> subprocess.CompletedProcess:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(lint_imports), str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=site.parent, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)


def test_imports_only_run_down_the_layers(tmp_path):
    out = lint(installed_layout(tmp_path / "site"))
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "1 kept, 0 broken" in out.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    site = installed_layout(tmp_path / "site")
    (site / "drivegpt" / "data" / "upward.py").write_text("import drivegpt.rl.policy\n")
    out = lint(site)
    assert out.returncode != 0
    assert "drivegpt.data.upward -> drivegpt.rl.policy" in out.stdout
