"""Every tutorial notebook runs, in smoke mode, as part of the test suite.

The list below is the table of contents: a notebook in tutorials/ that is not listed, or a
listed one that is missing, fails the suite, so tutorials cannot silently rot or vanish.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TUTORIALS_DIR = Path(__file__).resolve().parents[1] / "tutorials"
TUTORIALS = sorted(p.name for p in TUTORIALS_DIR.glob("*.ipynb"))
EXPECTED = [
    "diffusion_as_hierarchical_vae.ipynb",
    "gans.ipynb",
    "normalizing_flows.ipynb",
    "score_models_and_sdes.ipynb",
    "vae_applications.ipynb",
    "vae_guides_and_priors.ipynb",
    "your_own_model.ipynb",
]


def test_tutorial_list_is_complete():
    assert sorted(EXPECTED) == TUTORIALS


@pytest.mark.parametrize("name", EXPECTED)
def test_tutorial_runs_in_smoke_mode(name, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("CI", "1")  # the notebooks read smoke_test = "CI" in os.environ
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYRO_GEN_OFFLINE", os.environ.get("PYRO_GEN_OFFLINE", "1"))
    notebook = nbformat.read(TUTORIALS_DIR / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    errors = [
        out
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
