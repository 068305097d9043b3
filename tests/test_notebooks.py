"""The notebooks are jupytext pairs: every ``notebooks/*.py`` percent script has an ``.ipynb``
with the same cells (CI executes the ``.ipynb`` files with ``pytest --nbmake notebooks/``).
After editing a script, ``jupytext --sync notebooks/*.py`` updates its notebook."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = ("01-quickstart", "02-certification-report", "03-roofline")


def _cells(path: Path) -> list[tuple[str, str]]:
    jupytext = pytest.importorskip("jupytext")
    nb = jupytext.read(path)
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_every_notebook_is_there() -> None:
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.py")) == list(EXPECTED)
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == list(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_script_and_notebook_have_the_same_cells(name: str) -> None:
    script, notebook = _cells(NOTEBOOKS / f"{name}.py"), _cells(NOTEBOOKS / f"{name}.ipynb")
    assert script == notebook, f"{name}: run `jupytext --sync notebooks/{name}.py`"
    assert sum(kind == "code" for kind, _ in script) >= 3


@pytest.mark.parametrize("name", EXPECTED)
def test_notebooks_are_stored_without_outputs(name: str) -> None:
    import json

    data = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
    assert data["metadata"]["kernelspec"]["name"] == "python3"
    assert data["metadata"]["jupytext"]["formats"] == "ipynb,py:percent"
    for cell in data["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
