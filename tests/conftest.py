import shutil
import subprocess
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")  # tests never open windows


def npm_modules(folder: Path, *needed: str) -> Path:
    """``folder/node_modules`` as ``folder/package-lock.json`` pins it: ``npm ci`` when one of ``needed``
    (paths inside it) is missing or the lock is newer than the install; skips when Node.js/npm is absent."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip(f"Node.js/npm not installed: cannot install the npm packages of {folder.name}/")
    modules = folder / "node_modules"
    stamp = modules / ".package-lock.json"  # npm writes it on every install
    installed = stamp.exists() and all((modules / name).exists() for name in needed)
    if not installed or stamp.stat().st_mtime < (folder / "package-lock.json").stat().st_mtime:
        proc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder,
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.fail(f"npm ci in {folder}/ failed:\n{proc.stdout}\n{proc.stderr}")
    return modules


def frontend_node_modules(*needed: str) -> Path:
    """``frontend/node_modules`` (see :func:`npm_modules`)."""
    return npm_modules(Path(__file__).resolve().parent.parent / "frontend", *needed)
