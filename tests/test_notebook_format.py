"""Notebooks are committed in the form JupyterLab saves them, so opening one changes nothing on disk:
no outputs or execution counts, ipykernel's python3 kernelspec, the language_info the kernel
reports, and the bytes that Jupyter's own contents manager writes.

A notebook that fails here is fixed by `python tests/test_notebook_format.py notebooks/NAME.ipynb`
(or by clearing its outputs and saving it in JupyterLab)."""

import json
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def standard_metadata() -> dict:
    """What JupyterLab writes for a python3 kernel: the kernelspec as ipykernel installs it and
    the language_info the kernel reports in its kernel_info reply."""
    from ipykernel.ipkernel import IPythonKernel
    from jupyter_client.kernelspec import KernelSpecManager
    spec = KernelSpecManager().get_kernel_spec("python3")
    return {"kernelspec": {"display_name": spec.display_name, "language": spec.language, "name": "python3"},
            "language_info": dict(IPythonKernel.language_info)}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_outputs_or_execution_counts(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    dirty = [i for i, c in enumerate(cells) if c["cell_type"] == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs or execution counts; clear them"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_kernelspec_and_language_info_are_jupyterlabs(path):
    metadata = json.loads(path.read_text(encoding="utf-8"))["metadata"]
    expected = standard_metadata()
    assert metadata["kernelspec"] == expected["kernelspec"] == {
        "display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    info = dict(metadata["language_info"])
    assert re.fullmatch(r"3\.\d+\.\d+", info.pop("version"))    # the saving kernel's Python
    expected["language_info"].pop("version")
    assert info == expected["language_info"]
    assert set(metadata) == {"kernelspec", "language_info"}, f"{path.name}: extra notebook metadata"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_saving_through_jupyter_changes_no_byte(path, tmp_path):
    """JupyterLab saves through jupyter_server's contents manager; a round trip is the identity."""
    from jupyter_server.services.contents.filemanager import FileContentsManager
    shutil.copy(path, tmp_path / path.name)
    contents = FileContentsManager(root_dir=str(tmp_path))
    contents.save(contents.get(path.name), path.name)
    assert (tmp_path / path.name).read_bytes() == path.read_bytes(), \
        f"{path.name} is not stored as Jupyter writes it"


def normalise(path: Path) -> None:
    """Clear outputs and counts, set the standard metadata, write as Jupyter does."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata = nbformat.from_dict(standard_metadata())
    path.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")


if __name__ == "__main__":
    for name in sys.argv[1:]:
        normalise(Path(name))
