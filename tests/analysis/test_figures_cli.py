"""``recu figures``, the lazy imports and the CLI wiring."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recu.analysis import theory as T
from recu.analysis.figures import monte_carlo_quantization_error
from recu.cli import main as cli_main


def test_monte_carlo_points_follow_the_corrected_form() -> None:
    taus = [0.6, 0.8, 0.95]
    mc = monte_carlo_quantization_error(taus, b=2.0, samples=200_000, seed=1)
    np.testing.assert_allclose(mc, T.quantization_error(np.array(taus), 2.0), rtol=0.03, atol=2e-3)
    assert mc[0] < 0.1 * T.quantization_error(0.6, 2.0, form="paper")


def test_figures_command_writes_both_pngs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["figures", "-o", str(tmp_path), "--samples", "5000"]) == 0
    for name in ("fig3_quantization_error.png", "fig4_entropy.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 20_000
    assert "fig4_entropy.png" in capsys.readouterr().out


def test_cli_reports_errors_with_exit_code_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["figures", "-o", str(tmp_path), "--samples", "10"]) == 1
    assert "--samples" in capsys.readouterr().err
    assert cli_main(["analyze", str(tmp_path / "nothing")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_import_needs_neither_matplotlib_nor_scipy() -> None:
    code = ("import sys, recu.analysis, recu.analysis.report, recu.analysis.figures; "
            "bad = [m for m in ('matplotlib', 'scipy') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
