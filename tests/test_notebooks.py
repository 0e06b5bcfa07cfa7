"""Both notebooks execute (nbclient, as nbmake does) on small settings; they are stored without outputs."""

import csv

import nbformat
import pytest
from conftest import ROOT

NOTEBOOKS = ROOT / "notebooks"


def execute(name: str) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


@pytest.mark.parametrize("name", ["01_quickstart.ipynb", "02_sweep_analysis.ipynb"])
def test_notebooks_are_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_both_notebooks_execute(tmp_path, monkeypatch):
    run = tmp_path / "quickstart"
    for key, value in {"ANOGAN_EPOCHS": "1", "ANOGAN_WIDTH": "8", "ANOGAN_STEPS": "2", "ANOGAN_TEST_SUBSET": "60",
                       "ANOGAN_RUN_DIR": str(run), "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)
    nb = execute("01_quickstart.ipynb")
    assert images(nb) == 5  # samples, Fig. 2, Fig. 3a, 3b, 3c/d
    assert (run / "metrics.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()

    sweep = tmp_path / "sweep"
    monkeypatch.setenv("ANOGAN_SWEEP_DIR", str(sweep))
    monkeypatch.setenv("ANOGAN_CKPT", str(run / "checkpoints" / "last.ckpt"))
    monkeypatch.setenv("ANOGAN_LAMS", "0.1,0.5")
    monkeypatch.setenv("ANOGAN_STEPS", "1,2")
    monkeypatch.setenv("ANOGAN_EXTRA", "logger=none +data.eval_train_samples=0")
    nb = execute("02_sweep_analysis.ipynb")
    with open(sweep / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    assert images(nb) == 3  # AUROC against lam and steps, the best job's histogram, the heatmap
