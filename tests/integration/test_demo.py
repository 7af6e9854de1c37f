"""`stagesync demo` end to end, non-interactive: it must exit 0 after verifying staging."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_runs_to_a_verified_summary(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "stagesync"), "demo", "--non-interactive",
         "--documents", "600", "--burst", "1500"],
        cwd=tmp_path, capture_output=True, text=True, timeout=420,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "demo passed: staging converged" in result.stdout
    assert "staging documents holding a raw email: 0" in result.stdout
    assert "QA notes on staging documents kept: 20/20" in result.stdout
