"""``loli-plugin demo`` runs end to end (short settings) and writes its table and plot."""

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("peft")
pytest.importorskip("matplotlib")

from loli_plugin.cli import main  # noqa: E402


def test_demo_runs_and_writes_the_plot(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--pretrain-steps", "20", "--steps", "30", "--clusters", "5"]) == 0
    out = capsys.readouterr().out
    assert "| cluster | t range | steps |" in out and "| 04 |" in out
    assert "held-out digit-9 loss on a fixed t grid" in out
    png = tmp_path / "demo_clusters.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
