"""Issue 25: the tables of measured figures are generated from the JSON of their runs by scripts/figures.py;
a block edited by hand (or a JSON re-measured without regenerating) fails here, and so in CI."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "figures.py"
sys.path.insert(0, str(REPO / "scripts"))

import figures  # noqa: E402


def test_every_generated_block_matches_its_json():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + "\nrun: python3 scripts/figures.py"


def _copy_docs(tmp_path: Path) -> Path:
    for doc in {d for d, _ in figures.BLOCKS.values()}:
        (tmp_path / doc).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / doc, tmp_path / doc)
    return tmp_path


def test_a_figure_edited_by_hand_is_reported(tmp_path):
    root = _copy_docs(tmp_path)
    doc = root / "docs" / "engines.md"
    text = doc.read_text()
    begin, end = figures.markers("engines-openvino-avx2")
    body = text.split(begin, 1)[1].split(end, 1)[0]
    assert "(1.55×)" in body  # the AVX2 OpenVINO INT8 figure from docs/bench/openvino.json
    doc.write_text(text.replace(body, body.replace("(1.55×)", "(1.57×)", 1)))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check", "--root", str(root)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "docs/engines.md: engines-openvino-avx2" in proc.stderr
    assert "README.md" not in proc.stderr  # only the block that differs is listed
    # rewriting restores it, and the check passes again
    assert figures.sync(root) == ["docs/engines.md: engines-openvino-avx2"]
    assert figures.sync(root, check=True) == []


def test_a_missing_block_is_an_error_not_a_pass(tmp_path):
    root = _copy_docs(tmp_path)
    readme = root / "README.md"
    begin, _ = figures.markers("readme-figures")
    readme.write_text(readme.read_text().replace(begin, ""))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check", "--root", str(root)], capture_output=True, text=True)
    assert proc.returncode == 2 and "readme-figures" in proc.stderr


def test_every_row_names_its_run_cpu_and_date():
    for name, (_, fn) in figures.BLOCKS.items():
        if name == "experiments":
            continue  # its rows carry their own date and CPU column
        body = fn()
        assert ".json`](" in body, name
        assert "2026-" in body and "EPYC" in body, name


def test_a_rewritten_json_without_date_and_cpu_is_refused(monkeypatch):
    rel = "docs/bench/v1/deploy_acceptance.json"  # a list of bundles: records neither date nor CPU itself
    assert isinstance(figures.load(rel), list)
    entry = figures.provenance()[rel]
    monkeypatch.setitem(figures.provenance(), rel, {**entry, "sha256": "0" * 64})
    with pytest.raises(figures.FigureError, match="changed since"):
        figures.source(rel)


def test_readme_stays_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 150
