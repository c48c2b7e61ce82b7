"""The teaching notebooks in ``notebooks/``: committed without outputs, and each one runs top to bottom on the embedded
defaults (SmolLM2-135M-Instruct + real XSum, offline) at its tiny default budget, saving at least one figure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = ("01_quickstart", "02_lexicographic_reward", "03_train_ppo", "04_compare_algorithms",
            "05_write_your_own_agent", "06_replay_tables")
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

#: a line each notebook prints when it worked (cheap, notebook-specific checks)
MUST_PRINT = {
    "01_quickstart": "empty plan agreement: 1.000",
    "02_lexicographic_reward": "quality signal: agreement | tau: 0.1",
    "03_train_ppo": "files: ['monitor.csv', 'policy.zip', 'tensorboard']",
    "04_compare_algorithms": "written: ['episodes.csv', 'pareto.png', 'summary.csv']",
    "05_write_your_own_agent": "tau = 0.1",
    "06_replay_tables": "final policy on the test documents: FLOPs saved",
}


def _read(path: Path):
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(path, as_version=4)


def test_every_notebook_is_present():
    assert sorted(p.stem for p in NOTEBOOKS) == sorted(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_has_no_outputs(path):
    nb = _read(path)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: strip them before committing"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


def _printed_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif out.get("output_type") in ("execute_result", "display_data"):
                parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.assets
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    """Execute the notebook in a fresh kernel (working dir: a temp dir); any cell error fails the test. Afterwards no
    temporary ``skipenv-*`` folder is left behind and tqdm did not warn about missing ipywidgets."""
    pytest.importorskip("ipykernel")
    nbclient = pytest.importorskip("nbclient")

    figures = tmp_path / "figures"
    workdir = tmp_path / "work"
    workdir.mkdir()
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("SKIPENV_NB_FIGURES", str(figures))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the notebooks' run folders (tempfile.mkdtemp) land here
    # One torch thread per kernel unless the caller chose: on a shared or small machine, oversubscribed threads make
    # these CPU-bound notebooks several times slower.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")

    nb = _read(path)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()  # raises CellExecutionError (with the cell's traceback) on the first failing cell

    leftover = sorted(p.name for p in (tmp_path / "tmp").glob("skipenv-*"))
    assert not leftover, f"{path.name} left temporary folders behind: {leftover}"
    printed = _printed_text(nb)
    assert "IProgress not found" not in printed, f"{path.name} printed tqdm's IProgress warning"
    pngs = sorted((figures / path.stem).glob("*.png"))
    assert pngs, f"{path.name} saved no figure under {figures / path.stem}"
    empty = [p.name for p in pngs if p.stat().st_size == 0]
    assert not empty, f"{path.name} saved empty figures: {empty}"
    expected = MUST_PRINT.get(path.stem)
    if expected is not None:
        assert expected in printed, f"{path.name} did not print {expected!r}"
