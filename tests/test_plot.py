"""``loli-plugin plot`` reads TensorBoard event files (kohya's and OneTrainer's tag names) into a PNG."""

import pytest

pytest.importorskip("tensorboard")
pytest.importorskip("matplotlib")

from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from loli_plugin import ClusterLossMonitor  # noqa: E402
from loli_plugin.cli import main  # noqa: E402


@pytest.mark.parametrize("raw_tag", ["loss/current", "loss/train_step"])
def test_plot_writes_a_png_from_event_files(tmp_path, raw_tag, capsys):
    writer = SummaryWriter(str(tmp_path / "logs" / "run1"))
    monitor = ClusterLossMonitor(clusters=3)
    for step in range(30):
        k = step % 3
        loss = (k + 1) * (1.0 - step / 60)  # improving, but the raw value jumps with the cluster
        monitor.update(k, loss)
        writer.add_scalar(raw_tag, loss, step)
        for tag, value in monitor.logs().items():
            writer.add_scalar(tag, value, step)
    writer.close()
    out = tmp_path / "plot.png"
    assert main(["plot", str(tmp_path / "logs"), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert str(out) in capsys.readouterr().out


def test_plot_without_event_files(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 1
    assert "no TensorBoard event files" in capsys.readouterr().out
