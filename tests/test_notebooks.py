"""Every notebook runs top to bottom in a fresh Jupyter kernel, as a reader would run it, and is stored with
the outputs that run gives.

The notebooks live in ``pipesim/notebooks/`` (linked as ``notebooks/`` in a clone; ``pipesim examples DIR``
copies them): each runs alone in an empty temporary folder, so it reads only what pipesim ships (bundled
names), never ``../scenarios``. A failing cell fails the test and names the cell. They are stored executed
(``make notebooks``, which is ``scripts/execute_notebooks.py``) so that a reader on the repository's web page
sees every table and figure: each code cell that shows something has its outputs, and they are the ones a
fresh run gives (the seeds are fixed: same text, same kinds of output). Every figure of the fresh run is
written to ``out/notebook-figures/`` (``<notebook>-cell<NN>-<k>.png``), with the executed notebook, so that
a person can look at them.
"""

from __future__ import annotations

import ast
import base64
import importlib.util
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("execute_notebooks", ROOT / "scripts" / "execute_notebooks.py")
assert _spec and _spec.loader
execute_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute_notebooks)

NOTEBOOKS = sorted(execute_notebooks.NOTEBOOKS.glob("*.ipynb"))
FIGURES = ROOT / "out" / "notebook-figures"
ALLOWED_IMPORTS = {"pipesim", "pandas", "matplotlib", "numpy"}
MAX_NOTEBOOK_BYTES = 600_000  # stored with figures, each stays well under a megabyte


@pytest.fixture(scope="module")
def kernel() -> Iterator[str]:
    with execute_notebooks.this_interpreter_as_kernel() as name:
        yield name


def _save_figures(nb: Any, stem: str) -> list[Path]:
    FIGURES.mkdir(parents=True, exist_ok=True)
    for old in FIGURES.glob(f"{stem}-cell*.png"):
        old.unlink()
    written = []
    for index, cell in enumerate(nb.cells):
        k = 0
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png:
                k += 1
                path = FIGURES / f"{stem}-cell{index:02d}-{k}.png"
                path.write_bytes(base64.b64decode(png))
                written.append(path)
    return written


def _shown(cell: Any) -> list[tuple[str, ...]]:
    """What a code cell shows, comparable across runs: each output's kind and text (figures by kind alone:
    their bytes depend on the matplotlib build)."""
    shown = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            shown.append(("stream", output.name, output.text))
        else:
            data = output.get("data", {})
            shown.append((output.output_type, *sorted(data), str(data.get("text/plain", ""))
                           if "image/png" not in data else "a figure"))
    return shown


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_is_stored_with_its_outputs(path: Path, kernel: str, tmp_path: Path) -> None:
    shutil.copy(path, tmp_path / path.name)  # alone: nothing of the clone beside it
    started = time.perf_counter()
    try:
        nb = execute_notebooks.execute(tmp_path / path.name, tmp_path, kernel)
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

    stored = nbformat.read(path, as_version=4)
    fresh_cells = [c for c in nb.cells if c.cell_type == "code"]
    stored_cells = [c for c in stored.cells if c.cell_type == "code"]
    assert [c.source for c in stored_cells] == [c.source for c in fresh_cells]
    for number, (fresh, kept) in enumerate(zip(fresh_cells, stored_cells, strict=True), start=1):
        assert _shown(kept) == _shown(fresh), (
            f"{path.name}, code cell {number}: stored outputs differ from a fresh run's; run `make notebooks`"
            f"\nstored: {str(_shown(kept))[:400]}\nfresh:  {str(_shown(fresh))[:400]}")


def test_there_are_notebooks() -> None:
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]
    assert (ROOT / "notebooks").resolve() == execute_notebooks.NOTEBOOKS  # a clone's notebooks/ is the package's


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_executed_and_small(path: Path) -> None:
    """Stored executed top to bottom, with every figure and table, small, valid, and using only pipesim's
    public API, pandas and matplotlib."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, f"{path.name}: {path.stat().st_size:,} bytes"
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.cells[0].cell_type == "markdown", "a notebook opens by saying what the reader will see"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), f"{path.name}: not run in order"
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), f"{path.name}: no figure stored"
    for cell in code:
        assert not [o for o in cell.outputs if o.output_type == "error"], f"{path.name}: stored with an error"
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
