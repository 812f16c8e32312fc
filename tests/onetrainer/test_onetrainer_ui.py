"""The plugin's rows in OneTrainer's real UIs (PySide6 and customtkinter), built and looked at.

* PySide6 (in this process, ``QT_QPA_PLATFORM=offscreen``): the optimizer window for LOLI_CLUSTERED shows
  OneTrainer's own rows of the inner optimizer plus "Inner Optimizer", "Timestep Clusters" and "Cluster
  Schedule" in the slots the plugin's keys take; changing the inner to PRODIGY rebuilds the rows with
  Prodigy's rows and defaults; selecting ADAMW removes the plugin's rows. The training tab's loss section
  has "Cosine Strength" on row 9, bound to ``TrainConfig.cos_strength``.
* customtkinter (in a child process, on a private ``Xvfb`` display; Tk and Qt are kept out of one
  process): the same checks on ``CtkOptimizerParamsWindowView`` and ``CtkTrainingTabView``. Skipped when
  there is no ``Xvfb`` binary (Debian: ``apt-get install -y xvfb``).

Screenshots go to ``$LOLI_TEST_ARTIFACTS`` or ``<repo>/out/test-artifacts/``. The child process is this
file run as a script (``python test_onetrainer_ui.py --ctk-probe ...``).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGIN_ROWS = ["Inner Optimizer", "Timestep Clusters", "Cluster Schedule"]
#: titles of OneTrainer's KEY_DETAIL_MAP (BaseOptimizerParamsWindowView) for keys of ADAMW and PRODIGY only
ADAMW_ROWS = ["Beta1", "Beta2", "Weight Decay", "AMSGrad"]
ADAMW_ONLY = ["AMSGrad"]
PRODIGY_ROWS = ["Beta3", "Initial D", "D Coefficient", "Growth Rate", "Safeguard Warmup"]
#: (row, column) of the plugin's labels in the dynamic part of the window (its keys come first)
PLUGIN_SLOTS = {"Inner Optimizer": (1, 0), "Timestep Clusters": (1, 3), "Cluster Schedule": (2, 0)}
COSINE_ROW = 9
#: the progress probe's rows (TrainConfig fields), in every optimizer window, below the optimizer's rows
PROBE_ROWS = ["Progress Probe (loli-plugin)", "Progress Probe", "Probe Every", "Probe Samples", "Probe Clusters"]
XVFB_HELP = "install it with `apt-get install -y xvfb` (Debian/Ubuntu)"


def artifacts_dir() -> Path:
    path = Path(os.environ.get("LOLI_TEST_ARTIFACTS") or REPO / "out" / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def assert_not_blank(path: Path, min_size=(300, 200)) -> None:
    from PIL import Image

    with Image.open(path) as image:
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1], f"{path}: {image.size}"
        gray = image.convert("L")
        low, high = gray.getextrema()
        colors = gray.getcolors(maxcolors=256) or []
    assert high - low > 80 and len(colors) > 8, f"{path} looks blank (extrema {low}..{high}, {len(colors)} grays)"


def optimizer_config(ot, optimizer: str):
    """A UI-fresh TrainConfig with ``optimizer`` selected and its defaults applied as the UI does
    (OptimizerParamsWindowController.restore_optimizer_config → optimizer_util.change_optimizer)."""
    config = ot.TrainConfig.default_values()
    config.optimizer.optimizer = ot.Optimizer[optimizer]
    config.optimizer = ot.optimizer_util.change_optimizer(config)
    return config


# --------------------------------------------------------------------------- PySide6
@pytest.fixture(scope="module")
def qapp(ot):
    os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before the QApplication exists
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    if app.platformName() != "offscreen":
        pytest.skip(f"a QApplication on the {app.platformName()!r} platform already exists in this process")
    yield app
    settle(app)


def settle(app) -> None:
    from PySide6.QtCore import QEvent

    for _ in range(3):
        app.processEvents()
        app.sendPostedEvents(None, QEvent.Type.DeferredDelete.value)  # the rebuilt frames' deleteLater
    app.processEvents()


def qt_labels(root) -> list[str]:
    from PySide6.QtWidgets import QLabel

    return [label.text() for label in root.findChildren(QLabel) if label.isVisibleTo(root)]


def qt_label(root, text: str):
    from PySide6.QtWidgets import QLabel

    found = [label for label in root.findChildren(QLabel) if label.text() == text and label.isVisibleTo(root)]
    assert len(found) == 1, f"{len(found)} visible labels {text!r}"
    return found[0]


def qt_cell(widget) -> tuple[int, int]:
    layout = widget.parentWidget().layout()
    row, column, _, _ = layout.getItemPosition(layout.indexOf(widget))
    return row, column


def qt_beside(label):
    """The widget in the cell right of ``label`` (the label's value widget)."""
    row, column = qt_cell(label)
    item = label.parentWidget().layout().itemAtPosition(row, column + 1)
    assert item is not None and item.widget() is not None, f"nothing beside {label.text()!r}"
    return item.widget()


def qt_assert_no_overlap(frame) -> None:
    layout = frame.layout()
    cells = [layout.getItemPosition(i)[:2] for i in range(layout.count())]
    doubled = sorted({cell for cell in cells if cells.count(cell) > 1})
    assert not doubled, f"two widgets in the same grid cell(s) {doubled}"


def qt_optimizer_window(ot, config):
    from modules.ui.OptimizerParamsWindowController import OptimizerParamsWindowController
    from modules.ui.PySide6OptimizerParamsWindowView import PySide6OptimizerParamsWindowView
    from modules.util.ui.PySide6UIState import PySide6UIState

    return PySide6OptimizerParamsWindowView(None, OptimizerParamsWindowController(config), PySide6UIState(config))


@contextlib.contextmanager
def shown(app, widget):
    widget.show()
    settle(app)
    try:
        yield widget
    finally:
        widget.close()
        widget.deleteLater()
        settle(app)


def test_qt_optimizer_window_without_loli_has_no_plugin_rows(ot, qapp):
    config = optimizer_config(ot, "ADAMW")
    with shown(qapp, qt_optimizer_window(ot, config)) as window:
        labels = qt_labels(window)
        assert set(ADAMW_ROWS) <= set(labels), labels
        assert not set(PLUGIN_ROWS) & set(labels), labels
        assert window.optimizer_ui_state.get_var("loli_inner") is not None  # the fields exist, only hidden
        qt_check_probe_rows(window, config)  # the probe works with any optimizer: its rows are there


def qt_check_probe_rows(window, config) -> None:
    """The probe's rows sit below every row of the optimizer, in the same grid, bound to TrainConfig."""
    from PySide6.QtWidgets import QComboBox, QLabel, QLineEdit

    labels = qt_labels(window)
    assert all(labels.count(title) == 1 for title in PROBE_ROWS), labels
    frame = window._dynamic_frame
    probe_rows = {qt_cell(qt_label(window, title))[0] for title in PROBE_ROWS}
    other_rows = {
        qt_cell(label)[0]
        for label in frame.findChildren(QLabel)
        if label.parentWidget() is frame and label.isVisibleTo(window) and label.text() not in PROBE_ROWS
    }
    assert other_rows and min(probe_rows) > max(other_rows), (probe_rows, other_rows)
    assert all(qt_label(window, title).parentWidget() is frame for title in PROBE_ROWS)
    qt_assert_no_overlap(frame)
    mode = qt_beside(qt_label(window, "Progress Probe"))
    assert isinstance(mode, QComboBox) and [mode.itemText(i) for i in range(mode.count())] == ["auto", "on", "off"]
    assert mode.currentText() == config.loli_probe == "auto"
    every = qt_beside(qt_label(window, "Probe Every"))
    assert isinstance(every, QLineEdit) and every.text() == "100"
    mode.setCurrentText("on")  # the user turns it on: the training config changes, not the optimizer's
    window.ui_state.get_var("loli_probe_every").set("25")
    assert config.loli_probe == "on" and config.loli_probe_every == 25
    assert ot_requests_probe(config)


def ot_requests_probe(config) -> bool:
    import loli_plugin.patches.onetrainer as patches

    return patches.requests_probe(config)


def test_qt_optimizer_window_loli_clustered(ot, qapp):
    from modules.util.optimizer_util import OPTIMIZER_DEFAULT_PARAMETERS
    from PySide6.QtWidgets import QComboBox, QLineEdit

    config = optimizer_config(ot, "LOLI_CLUSTERED")
    assert config.optimizer.loli_inner == "ADAMW" and config.optimizer.loli_clusters == 10
    with shown(qapp, qt_optimizer_window(ot, config)) as window:
        window.resize(820, 520)
        settle(qapp)
        # the optimizer dropdown (row 0, column 1 of the window's frame)
        top = window._frame.layout().itemAtPosition(0, 1).widget()
        assert isinstance(top, QComboBox)
        assert "LOLI_CLUSTERED" in [top.itemText(i) for i in range(top.count())]
        assert top.currentText() == "LOLI_CLUSTERED"

        labels = qt_labels(window)
        assert set(PLUGIN_ROWS) <= set(labels), labels
        assert set(ADAMW_ROWS) <= set(labels), labels  # OneTrainer's own rows of the inner optimizer
        assert not set(PRODIGY_ROWS) & set(labels), labels
        for title in PLUGIN_ROWS:
            assert labels.count(title) == 1, labels
            assert qt_cell(qt_label(window, title)) == PLUGIN_SLOTS[title]
        qt_assert_no_overlap(window._dynamic_frame)

        inner = qt_beside(qt_label(window, "Inner Optimizer"))
        assert isinstance(inner, QComboBox) and inner.currentText() == "ADAMW"
        inner_values = [inner.itemText(i) for i in range(inner.count())]
        assert "PRODIGY" in inner_values and "LOLI_CLUSTERED" not in inner_values
        assert qt_beside(qt_label(window, "Timestep Clusters")).text() == "10"
        schedule = qt_beside(qt_label(window, "Cluster Schedule"))
        assert [schedule.itemText(i) for i in range(schedule.count())] == ["shuffle", "random", "round_robin"]

        path = artifacts_dir() / "onetrainer_qt_optimizer_window.png"
        assert window.grab().save(str(path))
        assert_not_blank(path)
        qt_check_probe_rows(window, config)

        # the user picks another inner optimizer: its rows (and OneTrainer's defaults for it) replace AdamW's
        inner.setCurrentText("PRODIGY")
        settle(qapp)
        assert config.optimizer.loli_inner == "PRODIGY"
        assert config.optimizer.optimizer == ot.Optimizer.LOLI_CLUSTERED
        labels = qt_labels(window)
        assert set(PLUGIN_ROWS) | set(PRODIGY_ROWS) <= set(labels), labels
        assert not set(ADAMW_ONLY) & set(labels), labels
        qt_assert_no_overlap(window._dynamic_frame)
        prodigy = OPTIMIZER_DEFAULT_PARAMETERS[ot.Optimizer.PRODIGY]
        d_coef = qt_beside(qt_label(window, "D Coefficient"))
        assert isinstance(d_coef, QLineEdit) and d_coef.text() == str(prodigy["d_coef"]), (
            "Prodigy's defaults not applied"
        )
        assert config.optimizer.d_coef == prodigy["d_coef"]
        assert config.optimizer.weight_decay == prodigy["weight_decay"]
        assert config.optimizer_defaults["LOLI_CLUSTERED"].loli_inner == "PRODIGY"  # remembered by OneTrainer
        probe_rows = {qt_cell(qt_label(window, title))[0] for title in PROBE_ROWS}
        assert min(probe_rows) > qt_cell(qt_label(window, "D Coefficient"))[0]  # below Prodigy's rows now
        assert qt_beside(qt_label(window, "Inner Optimizer")).currentText() == "PRODIGY"
        path = artifacts_dir() / "onetrainer_qt_optimizer_window_prodigy.png"
        assert window.grab().save(str(path))
        assert_not_blank(path)

        # back to a plain optimizer: the plugin's rows go away
        top.setCurrentText("ADAMW")
        settle(qapp)
        labels = qt_labels(window)
        assert config.optimizer.optimizer == ot.Optimizer.ADAMW
        assert set(ADAMW_ROWS) <= set(labels) and not set(PLUGIN_ROWS) & set(labels), labels


@pytest.mark.parametrize("model_type", ["STABLE_DIFFUSION_15", "FLUX_DEV_1", "PIXART_ALPHA"])
def test_qt_training_tab_cosine_strength(ot, qapp, model_type):
    from modules.ui.PySide6TrainingTabView import PySide6TrainingTabView
    from modules.ui.TrainingTabController import TrainingTabController
    from modules.util.enum.ModelType import ModelType
    from modules.util.ui.PySide6UIState import PySide6UIState
    from PySide6.QtWidgets import QLineEdit

    config = ot.TrainConfig.default_values()
    config.model_type = ModelType[model_type]
    ui_state = PySide6UIState(config)
    with shown(qapp, PySide6TrainingTabView(None, TrainingTabController(config), ui_state)) as tab:
        tab.resize(1400, 950)
        settle(qapp)
        cosine = qt_label(tab, "Cosine Strength")
        assert qt_cell(cosine) == (COSINE_ROW, 0)
        assert cosine.parentWidget() is qt_label(tab, "MSE Strength").parentWidget()  # in the loss section
        qt_assert_no_overlap(cosine.parentWidget())
        entry = qt_beside(cosine)
        assert isinstance(entry, QLineEdit) and float(entry.text()) == 0.0
        ui_state.get_var("cos_strength").set("0.2")
        assert config.cos_strength == 0.2 and entry.text() == "0.2"
        if model_type == "STABLE_DIFFUSION_15":
            path = artifacts_dir() / "onetrainer_qt_training_tab.png"
            assert tab.grab().save(str(path))
            assert_not_blank(path)


# --------------------------------------------------------------------------- customtkinter under Xvfb
@contextlib.contextmanager
def xvfb(timeout: float = 15.0):
    """A private X server; yields its DISPLAY (Xvfb picks a free display number: -displayfd)."""
    read_fd, write_fd = os.pipe()
    server = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    os.close(write_fd)
    try:
        number, deadline = b"", time.monotonic() + timeout
        while not number.endswith(b"\n"):
            ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(read_fd, 64) if ready else b""
            if not chunk:
                server.kill()
                raise RuntimeError(
                    f"Xvfb did not start: {server.communicate(timeout=5)[1].decode(errors='replace')[-2000:]}"
                )
            number += chunk
        yield f":{int(number)}"
    finally:
        os.close(read_fd)
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=5)


def test_ctk_optimizer_window_and_training_tab_under_xvfb(ot, tmp_path):
    if shutil.which("Xvfb") is None:
        pytest.skip(f"the customtkinter UI test needs an X server and no `Xvfb` binary is on PATH; {XVFB_HELP}")
    report = tmp_path / "ctk.json"
    with xvfb() as display:
        child = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--ctk-probe",
                str(report),
                str(artifacts_dir()),
                str(ot.mgds_dir / "src"),
            ],
            cwd=ot.dir,
            env={**os.environ, "DISPLAY": display},
            capture_output=True,
            text=True,
            timeout=600,  # a hang guard: the child takes ~20 s of CPU, minutes on a loaded machine
        )
    failed = f"ctk probe failed (rc {child.returncode}):\n{child.stdout[-4000:]}\n{child.stderr[-8000:]}"
    data = json.loads(report.read_text()) if report.exists() else {}  # written as far as the probe got
    assert "loli" in data, failed

    loli = data["loli"]
    assert "LOLI_CLUSTERED" in loli["optimizer_values"] and loli["optimizer"] == "LOLI_CLUSTERED"
    assert set(PLUGIN_ROWS) | set(ADAMW_ROWS) <= set(loli["labels"]), loli["labels"]
    assert not set(PRODIGY_ROWS) & set(loli["labels"]), loli["labels"]
    assert {title: tuple(cell) for title, cell in loli["cells"].items()} == PLUGIN_SLOTS
    assert not loli["overlaps"], loli["overlaps"]
    assert (
        loli["inner"] == "ADAMW" and "PRODIGY" in loli["inner_values"] and "LOLI_CLUSTERED" not in loli["inner_values"]
    )
    assert loli["clusters"] == "10"
    assert child.returncode == 0, failed

    prodigy = data["prodigy"]
    assert prodigy["loli_inner"] == "PRODIGY" and prodigy["inner"] == "PRODIGY"
    assert set(PLUGIN_ROWS) | set(PRODIGY_ROWS) <= set(prodigy["labels"]), prodigy["labels"]
    assert not set(ADAMW_ONLY) & set(prodigy["labels"]), prodigy["labels"]
    assert not prodigy["overlaps"], prodigy["overlaps"]
    assert prodigy["d_coef_entry"] == str(prodigy["d_coef_default"]), "Prodigy's defaults not applied"
    assert prodigy["d_coef_config"] == prodigy["d_coef_default"]

    adamw = data["adamw"]
    assert set(ADAMW_ROWS) <= set(adamw["labels"]) and not set(PLUGIN_ROWS) & set(adamw["labels"]), adamw["labels"]
    for state in (loli, prodigy, adamw):  # the probe's rows, below the optimizer's, whatever the optimizer
        assert set(state["probe_cells"]) == set(PROBE_ROWS), state["labels"]
        assert min(row for row, _ in state["probe_cells"].values()) > state["max_other_row"], state
        assert not state["overlaps"], state["overlaps"]

    tab = data["training_tab"]
    assert tab["cosine_cell"] == [COSINE_ROW, 0] and tab["same_frame_as_mse"]
    assert float(tab["cosine_entry"]) == 0.0 and tab["cos_strength_after_set"] == 0.2

    for name in (
        "onetrainer_ctk_optimizer_window.png",
        "onetrainer_ctk_optimizer_window_prodigy.png",
        "onetrainer_ctk_training_tab.png",
    ):
        assert_not_blank(artifacts_dir() / name)


def _ctk_probe(report: Path, artifacts: Path, mgds_src: str) -> None:
    """Run in the child (CWD = OneTrainer's root, DISPLAY = the Xvfb): build the ctk views, write a report."""
    for path in (mgds_src, os.getcwd()):
        if path not in sys.path:
            sys.path.insert(0, path)
    import customtkinter as ctk
    from modules.ui.CtkOptimizerParamsWindowView import CtkOptimizerParamsWindowView
    from modules.ui.CtkTrainingTabView import CtkTrainingTabView
    from modules.ui.OptimizerParamsWindowController import OptimizerParamsWindowController
    from modules.ui.TrainingTabController import TrainingTabController
    from modules.util.config.TrainConfig import TrainConfig
    from modules.util.enum.Optimizer import Optimizer
    from modules.util.optimizer_util import OPTIMIZER_DEFAULT_PARAMETERS, change_optimizer
    from modules.util.ui.CtkUIState import CtkUIState
    from PIL import ImageGrab

    display = os.environ["DISPLAY"]

    def pump(seconds=0.4):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            root.update()
            time.sleep(0.02)

    def walk(widget):
        yield widget
        for child in widget.winfo_children():
            yield from walk(child)

    def labels(window):
        return [w.cget("text") for w in walk(window) if isinstance(w, ctk.CTkLabel) and w.cget("text")]

    def label(window, text):
        found = [w for w in walk(window) if isinstance(w, ctk.CTkLabel) and w.cget("text") == text]
        assert len(found) == 1, f"{len(found)} labels {text!r}"
        return found[0]

    def cell(widget):
        info = widget.grid_info()
        return [int(info["row"]), int(info["column"])]

    def beside(widget):
        row, column = cell(widget)
        slaves = widget.master.grid_slaves(row=row, column=column + 1)
        assert len(slaves) == 1, f"{len(slaves)} widgets beside {widget.cget('text')!r}"
        return slaves[0]

    def overlaps(frame):
        cells = [tuple(cell(w)) for w in frame.grid_slaves()]
        return sorted({c for c in cells if cells.count(c) > 1})

    def screenshot(window, name):
        window.lift()
        pump(0.3)
        x, y = window.winfo_rootx(), window.winfo_rooty()
        box = (x, y, x + window.winfo_width(), y + window.winfo_height())
        ImageGrab.grab(bbox=box, xdisplay=display).save(artifacts / name)

    def menus(window):
        return [w for w in walk(window) if isinstance(w, ctk.CTkOptionMenu)]

    def state(window, config):
        inner = beside(label(window, "Inner Optimizer")) if "Inner Optimizer" in labels(window) else None
        top = beside(label(window, "Optimizer"))
        result = {
            "labels": labels(window),
            "optimizer": top.get(),
            "optimizer_values": list(top.cget("values")),
            "overlaps": overlaps(window.frame),
            "loli_inner": config.optimizer.loli_inner,
            "cells": {t: cell(label(window, t)) for t in PLUGIN_ROWS if t in labels(window)},
            "probe_cells": {t: cell(label(window, t)) for t in PROBE_ROWS if t in labels(window)},
            "max_other_row": max(
                cell(w)[0]
                for w in window.frame.grid_slaves()
                if isinstance(w, ctk.CTkLabel) and w.cget("text") and w.cget("text") not in PROBE_ROWS
            ),
        }
        if inner is not None:
            result |= {
                "inner": inner.get(),
                "inner_values": list(inner.cget("values")),
                "clusters": beside(label(window, "Timestep Clusters")).get(),
            }
        return result, top, inner

    report_data = {}
    root = ctk.CTk()
    root.geometry("120x80+1150+940")  # no window manager: keep the root out of the screenshots' way
    try:
        config = TrainConfig.default_values()
        config.optimizer.optimizer = Optimizer.LOLI_CLUSTERED
        config.optimizer = change_optimizer(config)
        window = CtkOptimizerParamsWindowView(root, OptimizerParamsWindowController(config), CtkUIState(root, config))
        window.geometry("820x520+0+0")
        pump()
        report_data["loli"], top, inner = state(window, config)
        screenshot(window, "onetrainer_ctk_optimizer_window.png")

        assert inner is not None, f"no 'Inner Optimizer' row: {labels(window)}"
        inner._dropdown_callback("PRODIGY")  # what a click on the dropdown's entry calls
        pump()
        report_data["prodigy"], top, _ = state(window, config)
        report_data["prodigy"] |= {
            "d_coef_entry": beside(label(window, "D Coefficient")).get(),
            "d_coef_default": OPTIMIZER_DEFAULT_PARAMETERS[Optimizer.PRODIGY]["d_coef"],
            "d_coef_config": config.optimizer.d_coef,
        }
        screenshot(window, "onetrainer_ctk_optimizer_window_prodigy.png")

        top._dropdown_callback("ADAMW")
        pump()
        report_data["adamw"], _, _ = state(window, config)
        window.grab_release()
        window.destroy()
        pump(0.1)

        config = TrainConfig.default_values()
        ui_state = CtkUIState(root, config)
        holder = ctk.CTkToplevel(root)
        holder.geometry("1270x1010+0+0")
        CtkTrainingTabView(holder, TrainingTabController(config), ui_state)
        pump(0.8)
        cosine = label(holder, "Cosine Strength")
        entry = beside(cosine)
        report_data["training_tab"] = {
            "cosine_cell": cell(cosine),
            "same_frame_as_mse": cosine.master is label(holder, "MSE Strength").master,
            "cosine_entry": entry.get(),
        }
        ui_state.get_var("cos_strength").set("0.2")
        report_data["training_tab"]["cos_strength_after_set"] = config.cos_strength
        screenshot(holder, "onetrainer_ctk_training_tab.png")
        holder.destroy()
    finally:
        report.write_text(json.dumps(report_data, indent=1))
        with contextlib.suppress(Exception):
            root.destroy()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--ctk-probe":
        _ctk_probe(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(f"usage: {sys.argv[0]} --ctk-probe REPORT.json ARTIFACT_DIR MGDS_SRC")
