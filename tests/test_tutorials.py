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


@pytest.mark.parametrize("name", EXPECTED)
def test_stored_outputs_come_from_a_finished_run(name):
    """The text of a tutorial reads its stored outputs, so every code cell must have been run
    and none may have failed in the run that is kept: a cell added or edited without being
    run, or one that raised, would leave the text without its evidence."""
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(TUTORIALS_DIR / name, as_version=4)
    code = [(i, c) for i, c in enumerate(notebook.cells) if c.cell_type == "code"]
    never_run = [i for i, c in code if c.source.strip() and c.get("execution_count") is None]
    failed = [
        i for i, c in code for out in c.get("outputs", []) if out.get("output_type") == "error"
    ]
    assert not never_run, f"{name}: code cells {never_run} have no stored output from a run"
    assert not failed, f"{name}: code cells {failed} raised in the stored run"
