"""Generated documentation stays generated: tables built from measured JSON match their files."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_experiments_table_matches_its_json_rows():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "experiments.py"), "table", "--check"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
