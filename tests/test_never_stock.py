"""Never the stock sampler under LoliClustered (issue 19), in the adapter layer, on a throwaway trainer made
here (``toytrainer``, its adapter declaring its layout as data): a LoliClustered built while the trainer's
package is imported, in a layout no patch of its adapter reaches (one it does not know, or an old one it
knows), is refused before any step, naming the trainer, its version, the supported minimum and what to
do; an old layout is said in one line at the package's import and by `loli-plugin doctor`; a plain
PyTorch loop (no trainer imported) and a loop of the user's own beside a supported trainer's helpers
keep working. Each real trainer's layouts: tests/<trainer>/test_*_standin_layout.py and, for the real
musubi-tuner v0.2.15, tests/musubi/test_musubi_old_layout.py."""

from __future__ import annotations

import sys

import pytest
import torch

from loli_plugin import LoliClustered
from loli_plugin.adapter import on_watched_import
from loli_plugin.cli import main as cli_main
from loli_plugin.errors import LoliUnsupportedTrainerError
from loli_plugin.hookspecs import hookimpl
from loli_plugin.layout import OldLayout, TrainerLayout
from loli_plugin.patches.instrument import FunctionPatch, Instrumentor
from loli_plugin.plugins import get_plugin_manager

from .trainer_support import STARTUP, plugin_lines, run_python, write_tree

OLD = "Trainer in old_trainer.py (toytrainer before v2.0)"


def entry(context, wrapped, instance, args, kwargs):
    with context.building_optimizer(args[0]):
        return wrapped(*args, **kwargs)


class Toy:
    """Made per test (its module-level patches would otherwise carry state between tests)."""

    @staticmethod
    def adapter(manifest):
        from loli_plugin.adapter import TrainerAdapter
        from loli_plugin.run import LoliRun

        class ToyAdapter(TrainerAdapter):
            name = "toy"
            library = "owner/toytrainer"
            supported = "owner/toytrainer v2.0 or later"
            layout = TrainerLayout(
                "toytrainer",
                "owner/toytrainer",
                minimum="v2.0",
                markers=("core/config.py", "core/data.py"),  # a generic name: told by its files
                distribution="toytrainer",
                old=(OldLayout(OLD, present=("old_trainer.py",), absent=("core/engine.py",)),),
            )
            entry_patch = FunctionPatch(
                "toytrainer.core.engine", "build_optimizer", "builds it", "activation", params=["args"], wrapper=entry
            )

            def __init__(self):
                super().__init__()
                self.patch = Instrumentor(self.library, self.supported, [self.entry_patch])
                self.manifest = manifest

            def instrumentors(self):
                return [(self.patch, "import")]

            def requests(self, args):
                return {"optimizer"} if "--loli" in args else set()

            def asked(self, args):
                return "--loli"

            def config_from_argv(self, argv):
                return list(argv)

            def activate(self, args, optimizer=None):
                self.run = LoliRun.for_optimizer(optimizer, config=args)
                return self.run

        return ToyAdapter()


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The throwaway trainer's adapter, registered like any plugin, and a function writing a tree of it
    (``{file: text}`` under tmp_path/<name>/toytrainer) and importing its package from there."""
    manifest = tmp_path / "toy.watch"
    manifest.write_text("toytrainer\n")
    adapter = Toy.adapter(manifest)

    class Plugin:
        @hookimpl
        def loli_trainer_adapters(self):
            return [adapter]

    get_plugin_manager().register(Plugin(), name="toy-adapter")

    def tree(name: str, files: dict[str, str], import_it: bool = True):
        root = write_tree(
            tmp_path / name,
            {
                "pyproject.toml": '[project]\nname = "toytrainer"\nversion = "1.5.0"\n',
                ".exported-commit": "abcdef1234567890abcdef1234567890abcdef12\n",
                "toytrainer/__init__.py": "",
                **{f"toytrainer/{rel}": text for rel, text in files.items()},
            },
        )
        monkeypatch.syspath_prepend(str(root))
        if import_it:
            import toytrainer

            on_watched_import(toytrainer)  # what the start-up finder does after the import
        return root

    yield adapter, tree
    get_plugin_manager().unregister(name="toy-adapter")
    adapter.uninstrument()
    for name in [n for n in sys.modules if n == "toytrainer" or n.startswith("toytrainer.")]:
        del sys.modules[name]


HELPERS = {"core/__init__.py": "", "core/config.py": "", "core/data.py": ""}
ENGINE = """
def build_optimizer(args):
    import torch
    from loli_plugin import LoliClustered

    return LoliClustered([torch.nn.Parameter(torch.zeros(2))], clusters=2)
"""


def build():
    return LoliClustered([torch.nn.Parameter(torch.zeros(2))], clusters=2)


def test_an_unknown_layout_is_refused_with_the_trainer_its_version_the_minimum_and_the_way(toy, capsys):
    adapter, tree = toy
    tree("unknown", {**HELPERS, "core/runner.py": ""})
    (line,) = plugin_lines(capsys.readouterr().err)  # said at the import, once
    assert "no toytrainer/core/engine.py" in line and "Plain runs are unaffected" in line
    with pytest.raises(LoliUnsupportedTrainerError) as refused:
        build()
    message = str(refused.value)
    assert "inside owner/toytrainer 1.5.0, commit abcdef1" in message  # the trainer and its version
    assert "no toytrainer/core/engine.py" in message and "stock timesteps" in message
    assert "Supported: v2.0 or later" in message and "Update owner/toytrainer to v2.0 or later" in message
    assert "in a training loop of your own, do not import toytrainer" in message


def test_an_old_layout_asked_for_loli_options_stops_at_its_import(toy, capsys, monkeypatch):
    adapter, tree = toy
    monkeypatch.setattr(sys, "argv", ["train.py", "--loli"])
    with pytest.raises(LoliUnsupportedTrainerError) as refused:  # the trainer's import: before any step
        tree("old", {**HELPERS, "old_trainer.py": ""})
    (line,) = plugin_lines(capsys.readouterr().err)
    assert line.startswith("loli-plugin: owner/toytrainer 1.5.0, commit abcdef1 (at ")
    assert f"{OLD} is a layout loli-plugin does not support (supported: v2.0 or later)" in line
    assert "This run asks for --loli, which loli-plugin cannot serve here" in line
    assert "Update owner/toytrainer to v2.0 or later" in line and "LOLI_PLUGIN_DISABLE=1" in line
    assert line.removeprefix("loli-plugin: ") == str(refused.value)  # the error is the line, said once
    with pytest.raises(LoliUnsupportedTrainerError, match="before v2.0"):
        build()
    # the recorded layout blocks every Loli feature at the trainer's own start-of-training check too
    with pytest.raises(LoliUnsupportedTrainerError):
        adapter.check_request(["--loli"])


def test_a_package_of_that_name_without_the_trainers_files_is_not_the_trainer(toy, capsys):
    adapter, tree = toy
    tree("other", {"runner.py": ""})  # no core/config.py, core/data.py
    assert plugin_lines(capsys.readouterr().err) == []
    assert build().clusters == 2


def test_a_loop_beside_a_known_layout_whose_factory_is_not_imported_keeps_working(toy):
    adapter, tree = toy
    tree("known", {**HELPERS, "core/engine.py": ENGINE})
    optimizer = build()
    optimizer.param_groups[0]["params"][0].grad = torch.ones(2)
    optimizer.step()
    assert adapter.run is None


def test_the_factory_imported_but_not_patched_is_refused_and_patched_it_starts_the_run(toy):
    adapter, tree = toy
    tree("known", {**HELPERS, "core/engine.py": ENGINE})
    import toytrainer.core.engine as engine  # imported but not patched: the start-up hook did not run

    with pytest.raises(LoliUnsupportedTrainerError, match="start-up hook did not run"):
        engine.build_optimizer(["--loli"])
    assert adapter.patch.instrument(adapter) == {}  # what the hook does at the import
    optimizer = engine.build_optimizer(["--loli"])  # the trainer's factory builds it: its run starts
    assert adapter.run is not None and adapter.run.optimizer is optimizer
    adapter.run = None
    build()  # built by other code while the factory is patched: the user's own optimizer
    assert adapter.run is None


def test_doctor_reports_an_old_layout(toy, capsys):
    adapter, tree = toy
    root = tree("old", {**HELPERS, "old_trainer.py": ""}, import_it=False)
    assert cli_main(["doctor", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"layout: owner/toytrainer 1.5.0, commit abcdef1 (at {root / 'toytrainer'}): {OLD}" in out
    assert "plain runs are unaffected" in out and "v2.0 or later" in out


PLAIN_LOOP = """
import sys, torch
from loli_plugin import LoliClustered
from loli_plugin.adapter import adapters
torch.manual_seed(0)
w = torch.nn.Parameter(torch.randn(3))
start = w.detach().clone()
opt = LoliClustered([w], inner="AdamW", clusters=3, lr=1e-2)
for step in range(6):
    (w ** 2).sum().backward()
    opt.step()
    opt.zero_grad()
print("trainers imported:", [a.name for a in adapters() if a.inside_trainer()])
print("moved:", bool((w.detach() - start).abs().min() > 0), "clusters stepped:", sum(n > 0 for n in opt.bank_steps))
"""


def test_a_plain_pytorch_loop_builds_and_steps_loli_clustered(tmp_path):
    """No trainer imported: LoliClustered is the optimizer of the user's own loop, as documented."""
    out = run_python(STARTUP + PLAIN_LOOP, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "trainers imported: []" in out.stdout and plugin_lines(out.stderr) == []
    assert "moved: True clusters stepped: 3" in out.stdout  # six steps went round the three cluster banks
