"""Execute the example notebooks end to end (slow: each trains small models on the CPU)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
TIMEOUT_S = 600  # per cell; each notebook takes about a minute on a busy 2-core CPU
NUMBER = r"\d\.\d{3}"


def _run(name: str, cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=TIMEOUT_S,
        kernel_name="python3",  # resolves to the running interpreter's ipykernel
        resources={"metadata": {"path": str(cwd)}},  # the kernel's working directory
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    return nb


def _texts(nb: nbformat.NotebookNode) -> list[str]:
    out = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                out.append(output.get("text", ""))
            elif "data" in output:
                out.append(output["data"].get("text/plain", ""))
    return out


def _num_images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


@pytest.fixture
def notebook_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch working directory and a disabled W&B for the kernel (it inherits the environment)."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_notebooks_are_stored_without_outputs() -> None:
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear its outputs"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["01_quickstart.ipynb", "02_drop_in.ipynb", "03_images.ipynb"])
def test_notebook_executes(name: str, notebook_env: Path) -> None:
    repo_files = {p for p in NOTEBOOKS.parent.iterdir()}
    nb = _run(name, notebook_env)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    if name != "02_drop_in.ipynb":  # 02 has no figures
        assert _num_images(nb) >= 1, "no inline figure: is the matplotlib backend inline?"
    texts = "\n".join(_texts(nb))
    if name == "01_quickstart.ipynb":
        table = re.search(rf"CA\s+ASR\s+RA\s*\nno defense\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s*\nE2ABL\s+{NUMBER}", texts)
        assert table, f"no CA/ASR table in the outputs:\n{texts[-3000:]}"
    else:
        assert re.search(rf"E2ABL\s+{NUMBER}\s+{NUMBER}", texts), f"no E2ABL results in the outputs:\n{texts[-3000:]}"
    assert {p for p in NOTEBOOKS.parent.iterdir()} == repo_files, "the notebook wrote into the repository"
