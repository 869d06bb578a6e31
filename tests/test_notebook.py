"""notebooks/colab_demo.ipynb runs top to bottom (at its smallest size) and writes its
rows and plots."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "colab_demo.ipynb"


@pytest.mark.slow
def test_colab_notebook_runs_at_the_smallest_size(tmp_path, monkeypatch):
    monkeypatch.setenv("TTC_DEMO_SIZE", "tiny")
    monkeypatch.setenv("TTC_DEMO_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))
    assert "size=tiny" in text
    assert "RESULT co_top_acc=" in text
    assert (tmp_path / "out" / "rows.jsonl").stat().st_size > 0
    assert (tmp_path / "out" / "compute_optimal.png").stat().st_size > 0
    images = [o for c in nb.cells for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 4
