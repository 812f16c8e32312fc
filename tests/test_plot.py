"""``loli-plugin plot`` reads TensorBoard event files (kohya's and OneTrainer's tag names and folder
layouts) into one PNG per run, in one output folder; it looks at most two folder levels deep."""

import pytest

pytest.importorskip("tensorboard")
pytest.importorskip("matplotlib")

import torch  # noqa: E402
from matplotlib.image import imread  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from loli_plugin import ClusterLossMonitor  # noqa: E402
from loli_plugin.cli import main  # noqa: E402
from loli_plugin.probe import ProgressProbe  # noqa: E402
from loli_plugin.sampling import LogitNormal  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def write_run(folder, raw_tag="loss/current", losses=True, probe=False):
    writer = SummaryWriter(str(folder))
    monitor = ClusterLossMonitor(clusters=3)
    progress = ProgressProbe(torch.ones(4, 2), LogitNormal(), clusters=3)
    for step in range(30):
        k = step % 3
        loss = (k + 1) * (1.0 - step / 60)  # improving, but the raw value jumps with the cluster
        if losses:
            monitor.update(k, loss)
            writer.add_scalar(raw_tag, loss, step)
            for tag, value in monitor.logs().items():
                writer.add_scalar(tag, value, step)
        else:
            writer.add_scalar("lr/unet", 1e-4, step)
        if probe and step % 5 == 0:
            # called here, in this iteration: the default binds this step's value
            result = progress(lambda x0, noise, t, step=step: (x0 * noise).mean(dim=1) * t * (1 - step / 60))
            for tag, value in result.items():
                writer.add_scalar(tag, value, step)
    writer.close()


@pytest.fixture
def logs(tmp_path):
    """A kohya --logging_dir (run/network_train, two levels), a OneTrainer-style run (one level), a run
    without loss scalars and a stray event file three levels down."""
    root = tmp_path / "logs"
    write_run(root / "20240101120000" / "network_train", "loss/current")
    write_run(root / "flat-run", "loss/train_step")
    write_run(root / "lr-only", losses=False)
    write_run(root / "a" / "b" / "too-deep")
    return root


def test_one_png_per_run_in_the_output_folder(logs, tmp_path, capsys):
    out = tmp_path / "plots"
    assert main(["plot", str(logs), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["20240101120000_network_train.png", "flat-run.png"]
    assert all(p.read_bytes()[:8] == PNG and p.stat().st_size > 10_000 for p in out.iterdir())
    assert not list(logs.rglob("*.png"))  # nothing written next to the runs
    printed = capsys.readouterr().out
    assert f"{logs / 'lr-only'}: skipped, no loss scalars" in printed and "too-deep" not in printed


def test_default_output_folder_is_named_and_in_the_current_folder(logs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["plot", str(logs / "flat-run")]) == 0  # one run's own folder
    assert (tmp_path / "loli-plots" / "flat-run.png").read_bytes()[:8] == PNG
    assert "loli-plots/flat-run.png" in capsys.readouterr().out


def test_next_to_runs_only_when_asked(logs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["plot", str(logs), "--next-to-runs"]) == 0
    assert sorted(p.relative_to(logs).as_posix() for p in logs.rglob("*.png")) == [
        "20240101120000/network_train/loli_clusters.png",
        "flat-run/loli_clusters.png",
    ]
    assert not (tmp_path / "loli-plots").exists()


def test_runs_without_loss_scalars_only(tmp_path, capsys):
    write_run(tmp_path / "run", losses=False)
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "plots")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"loli-plugin plot: error: {tmp_path}: 1 run(s) found, none with loss scalars")
    assert not (tmp_path / "plots").exists()


def test_probe_curves_get_their_own_panel(tmp_path):
    write_run(tmp_path / "logs" / "plain")
    write_run(tmp_path / "logs" / "probed", probe=True)
    assert main(["plot", str(tmp_path / "logs"), "--out", str(tmp_path / "plots")]) == 0
    plain, probed = (imread(tmp_path / "plots" / f"{name}.png") for name in ("plain", "probed"))
    assert probed.shape[0] > plain.shape[0] * 1.3  # a third panel: probe per cluster


def test_out_png_writes_that_file_for_one_run(tmp_path, capsys):
    write_run(tmp_path / "logs" / "run")
    target = tmp_path / "pictures" / "x.png"
    assert main(["plot", str(tmp_path / "logs"), "--out", str(target)]) == 0
    assert target.is_file() and target.read_bytes()[:8] == PNG  # a file, not a folder named x.png
    assert f": {target}" in capsys.readouterr().out


def test_out_png_with_several_runs_is_refused_with_the_count(logs, tmp_path, capsys):
    target = tmp_path / "x.png"
    assert main(["plot", str(logs), "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert "names one PNG" in err and "holds 2 runs with loss scalars" in err and len(err.strip().splitlines()) == 1
    assert not target.exists()
