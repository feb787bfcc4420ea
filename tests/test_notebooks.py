"""Every notebook in notebooks/ runs top to bottom in a fresh Jupyter kernel, as a reader would run it.

Each notebook runs in a temporary copy of ``notebooks/`` (beside a copy of ``scenarios/``, which the
notebooks load as ``../scenarios/...``), with the notebooks folder as working directory. A failing cell
fails the test and names the cell. Every figure the notebooks draw is written to ``out/notebook-figures/``
(``<notebook>-cell<NN>-<k>.png``), with the executed notebook (``<notebook>.executed.ipynb``), so that
a person can look at them.

The kernel is this interpreter (``sys.executable``): a kernelspec named ``python3`` is written to a
temporary folder at the front of ``JUPYTER_PATH``, so a ``python3`` kernelspec of another Python on the
machine cannot be picked up instead.
"""

from __future__ import annotations

import ast
import base64
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
FIGURES = ROOT / "out" / "notebook-figures"
ALLOWED_IMPORTS = {"pipesim", "pandas", "matplotlib", "numpy"}


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``python3`` kernelspec that runs this interpreter, first on ``JUPYTER_PATH``."""
    folder = tmp_path_factory.mktemp("jupyter")
    spec = folder / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "pipesim tests (this interpreter)",
        "language": "python",
        # Inline figures even if the environment sets MPLBACKEND (e.g. Agg in CI).
        "env": {"MPLBACKEND": "module://matplotlib_inline.backend_inline"},
    }))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(folder))
        mp.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        yield "python3"


def _save_figures(nb: object, stem: str) -> list[Path]:
    FIGURES.mkdir(parents=True, exist_ok=True)
    for old in FIGURES.glob(f"{stem}-cell*.png"):
        old.unlink()
    written = []
    for index, cell in enumerate(nb.cells):  # type: ignore[attr-defined]
        k = 0
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png:
                k += 1
                path = FIGURES / f"{stem}-cell{index:02d}-{k}.png"
                path.write_bytes(base64.b64decode(png))
                written.append(path)
    return written


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, kernel: str, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copytree(ROOT / "scenarios", tmp_path / "scenarios")
    workdir = tmp_path / "notebooks"
    nb = nbformat.read(workdir / path.name, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=240,
                                     resources={"metadata": {"path": str(workdir)}})
    started = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"{path.name}: a cell failed:\n{exc}", pytrace=False)
    elapsed = time.perf_counter() - started
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    # A reader without ipywidgets must not be told to install it: pipesim picks tqdm's text bar itself.
    texts = [str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
             for c in nb.cells for o in c.get("outputs", [])]
    warned = [t for t in texts if "IProgress not found" in t or "TqdmWarning" in t]
    assert not warned, f"{path.name}: a cell printed a tqdm warning: {warned[0][:300]}"
    figures = _save_figures(nb, path.stem)
    nbformat.write(nb, FIGURES / f"{path.stem}.executed.ipynb")  # the outputs, for a person to read
    assert figures, f"{path.name} drew no figure"
    assert all(f.stat().st_size > 5_000 for f in figures), "a figure is (nearly) empty"
    assert elapsed < 120, f"{path.name} took {elapsed:.0f} s; keep notebooks quick"


def test_there_are_notebooks() -> None:
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_clean(path: Path) -> None:
    """Stored without outputs, valid, and using only pipesim's public API, pandas and matplotlib."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.cells[0].cell_type == "markdown", "a notebook opens by saying what the reader will see"
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: stored with outputs"
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in ALLOWED_IMPORTS, f"{path.name} imports {name}"
                assert name in ("pipesim", "pandas", "numpy") or name.startswith("matplotlib"), (
                    f"{path.name}: import pipesim itself, not {name}")
