"""Re-execute the notebooks of ``pipesim/notebooks/`` in place, so that they are stored with their outputs.

A reader on the repository's web page then sees every table and figure without running anything.
``make notebooks`` runs it after a change that moves a number or a figure; ``tests/test_notebooks.py``
executes each notebook again and checks that the stored outputs are what a fresh run prints (the notebooks
fix their seeds, so the text is the same run after run).

    python scripts/execute_notebooks.py [NOTEBOOK.ipynb ...]    # default: every notebook

The kernel is this interpreter: a ``python3`` kernelspec naming it is written to a temporary folder put
first on ``JUPYTER_PATH``, so that another Python's ``python3`` kernelspec on the machine is never used.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nbclient
import nbformat

NOTEBOOKS = Path(__file__).resolve().parent.parent / "pipesim" / "notebooks"
#: Inline figures at this resolution: readable on a web page, and the notebooks stay a few hundred KB.
FIGURE_DPI = 72


@contextmanager
def this_interpreter_as_kernel() -> Iterator[str]:
    """A ``python3`` kernelspec that runs ``sys.executable``, first on ``JUPYTER_PATH``; yields its name."""
    with tempfile.TemporaryDirectory() as folder:
        spec = Path(folder) / "kernels" / "python3"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (ipykernel)",
            "language": "python",
            # Inline PNGs even if the environment sets MPLBACKEND (e.g. Agg in CI), at a fixed resolution.
            "env": {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "PYDEVD_DISABLE_FILE_VALIDATION": "1"},
        }))
        saved = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = os.pathsep.join([folder, *([saved] if saved else [])])
        try:
            yield "python3"
        finally:
            if saved is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = saved


def execute(path: Path, workdir: Path, kernel: str = "python3", timeout: int = 240) -> nbformat.NotebookNode:
    """The notebook at ``path`` executed top to bottom in ``workdir`` (raises nbclient's CellExecutionError)."""
    nb = nbformat.read(path, as_version=4)
    setup = nbformat.v4.new_code_cell(f"%config InlineBackend.rc = {{'figure.dpi': {FIGURE_DPI}}}")
    nb.cells.insert(0, setup)  # run first, then taken out: the reader's notebook has no such cell
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=timeout, record_timing=False,
                                     resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute()
    finally:
        nb.cells.remove(setup)
    for number, cell in enumerate((c for c in nb.cells if c.cell_type == "code"), start=1):
        cell.execution_count = number  # as a reader running it top to bottom would see them
        for output in cell.outputs:
            if "execution_count" in output:
                output.execution_count = number
    return nb


def main(paths: list[str]) -> int:
    notebooks = [Path(p) for p in paths] or sorted(NOTEBOOKS.glob("*.ipynb"))
    with this_interpreter_as_kernel() as kernel, tempfile.TemporaryDirectory() as workdir:
        for path in notebooks:
            nb = execute(path, Path(workdir), kernel)
            nbformat.write(nb, path)
            print(f"executed {path} ({path.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
