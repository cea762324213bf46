"""The walkthrough notebook: stored without outputs, and run top to bottom by nbclient in its
SHORT mode (seconds of training) from a fresh kernel, writing only under tmp_path."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "walkthrough.ipynb"


def _code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_stored_notebook_is_valid_and_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    cells = _code_cells(notebook)
    assert cells
    for cell in cells:
        assert cell.outputs == [], f"cell {cell.id} is stored with outputs; `make notebook` writes them to runs/"
        assert cell.execution_count is None, f"cell {cell.id} is stored with an execution count"


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    work = tmp_path / "work"
    monkeypatch.setenv("CAPTIONER_NOTEBOOK_SHORT", "1")
    monkeypatch.setenv("CAPTIONER_NOTEBOOK_DIR", str(work))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Raises CellExecutionError, with the cell and its traceback, at the first cell that fails.
    NotebookClient(
        notebook, timeout=540, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    cells = _code_cells(notebook)
    assert all(cell.execution_count is not None for cell in cells)
    outputs = [output for cell in cells for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    printed = "".join(output.text for output in outputs if output.output_type == "stream" and output.name == "stdout")
    assert "mode: SHORT" in printed
    assert "attention by hand matches the package" in printed
    # The translation is printed whatever a few seconds of training make of it: up to ten output characters.
    assert re.search(r"^July 20th 1969 → [0-9-]{1,10}$", printed, re.MULTILINE)
    assert re.search(r"^T_x = +\d+: +[\d.]+ ms per step", printed, re.MULTILINE)
    assert len(re.findall(r"\.png: caption: +\S", printed)) == 3
    assert "deletion test of" in printed
    # α matrix, the cost plot, three overlays
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) == 5
    assert (work / "dates" / "moon.png").is_file()
    assert (work / "shapes" / "annotations" / "captions_test.json").is_file()
    assert (work / "shapes_run" / "checkpoints" / "best.ckpt").is_file()
    assert len(list((work / "overlays").glob("*.png"))) == 3
