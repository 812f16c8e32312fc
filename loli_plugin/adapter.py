"""The adapter interface: the one way a trainer ("host") plugs into loli-plugin.

A trainer integration is one ``TrainerAdapter`` object, returned by the ``loli_trainer_adapters``
hook of a module registered under the ``loli_plugin`` entry-point group. It declares:

* what it watches: the trainer modules listed in its manifest ``<adapter module>.watch`` (read at
  interpreter start by ``_loli_plugin_autoload`` without importing anything);
* its patches: ``instrumentors()``, each with a scope: ``"import"`` (applied when the module is
  imported; passes through for plain runs) or ``"run"`` (applied only when a run uses a Loli feature);
* its activation: the trainer's own entry points (its patches) call ``check_request`` and start a
  ``LoliRun``; which Loli features a run asks for (``requests``) and, declared once in ``FEATURES``,
  which patch features each of them needs;
* its logs and state: the ``LoliRun`` it keeps in ``run`` (per-cluster monitor carried in the
  optimizer's state_dict).

The core imports no adapter: adapters are found through the plugin manager (entry points).

Failure policy, "the host always starts": a patch that does not fit the installed trainer is
recorded and logged once, in one line naming it, the supported version and ``LOLI_PLUGIN_DISABLE``;
the trainer then runs without it. ``require`` raises ``LoliUnsupportedTrainerError`` naming every
unfit patch when a run asks for a feature one of them serves, before the first training step. An
unexpected error inside an adapter while a trainer module is imported is caught, logged once and
recorded the same way, so it blocks Loli runs but never a plain one.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable
from pathlib import Path

from .errors import ENV_DISABLE, LoliUnsupportedTrainerError
from .layout import TrainerLayout, package_folder
from .patches.instrument import Instrumentor, Patch, unsupported_message


def warn(message: str) -> None:
    """One line on stderr. Not through ``logging``: the trainers install rich handlers that wrap and
    prefix lines, and a drift report must stay one greppable line."""
    sys.stderr.write("loli-plugin: " + " ".join(message.split()) + "\n")
    sys.stderr.flush()


#: the pseudo-feature of an adapter's own failure: it blocks every Loli feature
ANY = "*"


#: what a Loli run may ask for, and the patch features (``Patch.features``) each request needs
FEATURES = {
    "optimizer": frozenset({"activation", "sampler", "logs"}),  # LoliClustered: its clusters drive the sampler
    "loss": frozenset({"activation", "loss"}),  # the Loli loss with the trainer's own optimizer
    "probe": frozenset({"activation", "sampler", "logs", "probe"}),  # the progress probe
    "validation": frozenset({"activation", "sampler", "logs", "validation"}),  # validation on held-out data
}


class TrainerAdapter:
    """Base class of the trainer adapters: subclass it, set the class attributes, implement
    ``instrumentors`` and ``requests`` (which Loli features a run's options ask for), and ``activate`` when
    the trainer builds its optimizer through ``entry_patch``. The rest (which patches a run needs, the
    refusal before the first step, attaching to a ``LoliClustered`` built inside the trainer, the
    run's one-line description) is here, once."""

    #: short name (launcher, doctor, logs): "kohya", "onetrainer", ...
    name: str = ""
    #: the trainer's name as users know it, e.g. "kohya-ss/sd-scripts"
    library: str = ""
    #: supported versions, quoted in every error
    supported: str = ""
    #: the manifest file listing the watched modules (``Path(__file__).with_suffix(".watch")``)
    manifest: Path | None = None
    #: the patch features of each request (``FEATURES``; an adapter whose every run needs more adds them)
    features: dict[str, frozenset] = FEATURES
    #: the patch of the trainer's function that builds its optimizer, which pushes that call's arguments
    #: (``building_optimizer``); None: the adapter builds the optimizer itself
    entry_patch: Patch | None = None
    #: the trainer's package, the supported minimum and the layouts known unsupported (``loli_plugin.layout``):
    #: a LoliClustered built while this package is imported, but not through ``entry_patch``, is refused
    layout: TrainerLayout | None = None

    def __init__(self) -> None:
        self.run = None
        self.problems: dict[str, tuple[Patch | None, str]] = {}
        self._building: list[tuple] = []  # arguments of the optimizer-building calls in progress (innermost last)

    # ------------------------------------------------------------------ what subclasses declare
    def instrumentors(self) -> list[tuple[Instrumentor, str]]:
        """``[(instrumentor, scope), ...]`` with scope ``"import"`` or ``"run"``."""
        raise NotImplementedError

    def recognises(self, module) -> bool:
        """Is this module really the trainer's? (Generic names like ``modules`` or ``library`` are
        shared with other projects.)"""
        return True

    def requests(self, config) -> set[str]:
        """Which Loli features (keys of ``features``) a run with these options asks for; empty: a plain run."""
        return set()

    def asked(self, config) -> str:
        """The run's Loli options as its user wrote them, for refusals ("--optimizer_type LoliClustered")."""
        return " and ".join(sorted(self.requests(config))) or "a Loli run"

    def activate(self, *call, optimizer=None):
        """Start the run of the optimizer-building call ``call`` (``building_optimizer``'s arguments)."""
        raise NotImplementedError

    def find_checkout(self, path: Path) -> bool:
        """Does ``path`` hold this trainer's source tree? (``loli-plugin doctor``)"""
        return False

    def activate_run_patches(self) -> None:
        """Apply every run-scope patch whose module is imported. If a needed one does not fit, the run
        is forgotten and the patches applied so far are undone before the error propagates, so the
        refused run leaves the trainer as it found it."""
        try:
            for inst, scope in self.instrumentors():
                if scope == "run":
                    self.record(inst.instrument(self))
            self.require(self.run_features(), f"this {self.library} run")
        except Exception:
            self.deactivate()
            raise

    # ------------------------------------------------------------------ what a run needs
    def features_for(self, config) -> set[str]:
        """The patch features a run with these options needs (empty: not a Loli run)."""
        return set().union(*(self.features[r] for r in self.requests(config)))

    def run_requests(self) -> set[str]:
        """What the active run asked for, read from its state."""
        run = self.run
        if run is None:
            return set()
        return (
            ({"optimizer"} if run.stratify else set())
            | ({"loss"} if getattr(run, "loss_weights", None) else set())
            | ({"probe"} if run.probe is not None else set())
            | ({"validation"} if getattr(run, "validation", None) is not None else set())
        )

    def run_features(self) -> set[str]:
        """The patch features the active run needs (checked again when a module is imported mid-run)."""
        return set().union(*(self.features[r] for r in self.run_requests()))

    def check_request(self, config) -> None:
        """At the trainer's first entry point: refuse a Loli run before any work if a patch it needs did
        not fit this trainer."""
        features = self.features_for(config)
        if features:
            self.require(features, self.asked(config))

    # ------------------------------------------------------------------ watched names
    @property
    def watches(self) -> tuple[str, ...]:
        if self.manifest is None:
            return ()
        lines = self.manifest.read_text(encoding="utf-8").splitlines()
        return tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))

    # ------------------------------------------------------------------ policy
    def on_import(self, module) -> None:
        """A watched module was imported: check its patches, apply the import-scope ones that fit (and
        the run-scope ones when a run is active), record the rest. The trainer's top-level package (watched
        where the adapter knows older layouts) is checked for its layout instead."""
        if self.layout is not None and module.__name__ == self.layout.package:
            self.check_layout(module)
            return
        if not self.recognises(module):
            return
        name = module.__name__
        for inst, scope in self.instrumentors():
            if name not in inst.modules():
                continue
            if scope == "import" or self.run is not None:
                self.record(inst.instrument(self, name))
            else:
                self.record(inst.problems(name))
        if self.run is not None:  # a module imported during a Loli run must fit, or the run stops now
            self.require(self.run_features(), f"this {self.library} run")

    def record(self, problems: dict[str, str]) -> None:
        """Remember unfit patches; report each once."""
        for patch_name, reason in problems.items():
            if patch_name in self.problems:
                continue
            self.problems[patch_name] = (self._patch(patch_name), reason)
            warn(
                f"{reason}; {self.library} runs without this patch (supported: {self.supported}). Runs that use Loli "
                f"options stop with this reason; {ENV_DISABLE}=1 turns loli-plugin off."
            )

    def fail(self, where: str, exc: BaseException) -> None:
        """An unexpected error in this adapter: block Loli runs, never a plain one."""
        self.problems.setdefault(
            f"{self.name}:{where}",
            (None, f"loli-plugin's {self.library} adapter failed on {where} ({type(exc).__name__}: {exc})"),
        )
        warn(
            f"its {self.library} adapter failed on {where} ({type(exc).__name__}: {exc}); the trainer runs without "
            f"loli-plugin. Please report it; {ENV_DISABLE}=1 turns loli-plugin off."
        )

    def blocking(self, features: Iterable[str]) -> dict[str, str]:
        """The recorded problems that block a run needing ``features``."""
        features = set(features)
        return {n: r for n, (p, r) in self.problems.items() if p is None or p.features & features}

    def require(self, features: Iterable[str], asked: str) -> None:
        """Raise ``LoliUnsupportedTrainerError`` (naming every unfit patch) if one blocks ``features``."""
        if self.blocking(features):
            raise LoliUnsupportedTrainerError(
                unsupported_message(self.library, self.supported, {n: r for n, (p, r) in self.problems.items()}, asked)
            )

    def check_layout(self, package) -> None:
        """The trainer's package was imported: a layout this adapter does not fit (``layout.old``, or no
        module of ``entry_patch``) is said once, in one line, and blocks Loli runs; a plain run goes on.
        A command line that asks for Loli options is stopped here, with that line as the error."""
        if not self.layout.recognises(package) or self.entry_patch is None:
            return
        folder = package_folder(package)
        problem = self.layout.layout_problem(folder, self.entry_patch.module)
        if problem is None or f"{self.name}:layout" in self.problems:
            return
        self.problems[f"{self.name}:layout"] = (None, f"{self.layout.describe(folder)}: {problem}")
        asked = self.asked_in_argv(sys.argv[1:])
        said = f"{self.layout.describe(folder)}: {problem} (supported: {self.layout.minimum} or later). "
        if not asked:
            warn(said + "Plain runs are unaffected; runs with Loli options are refused.")
            return
        # The command line asks for Loli options this layout cannot serve. Left to itself the trainer would
        # either train stock or stop in its own code with an error that does not name the plugin (musubi-tuner
        # v0.2.15 reads optimizer_args as Python, "malformed node or string"): stop here, at its import, before
        # any step, with the reason and the way on. ``on_watched_import`` lets this error through.
        message = (
            said + f"This run asks for {asked}, which loli-plugin cannot serve here. Update {self.layout.library} "
            f"to {self.layout.minimum} or later, or train without the Loli options ({ENV_DISABLE}=1 turns "
            "loli-plugin off)."
        )
        warn(message)
        raise LoliUnsupportedTrainerError(message, refused_at_import=True)

    def asked_in_argv(self, argv: list[str]) -> str:
        """The Loli options a command line asks for ("--optimizer_type LoliClustered", ...; "" for none),
        for the one line said at the import of a layout this adapter does not fit."""
        config = self.config_from_argv(argv)
        return self.asked(config) if config is not None and self.requests(config) else ""

    def config_from_argv(self, argv: list[str]):
        """The options of a command line, read without the trainer's parser, as ``requests`` takes them
        (None: this trainer's options are not on its command line)."""
        return None

    def not_integrated_error(self, folder: Path | None = None) -> LoliUnsupportedTrainerError:
        """For ``on_optimizer_created``: a LoliClustered is being built inside this trainer (whose package
        is at ``folder``) while its optimizer factory is imported but not patched, so the trainer would draw
        its stock timesteps while the cluster banks assume one cluster per step. Says why and how to fix it."""
        short = self.library.rpartition("/")[2]
        trainer = self.layout.describe(folder) if self.layout is not None and folder is not None else short
        return LoliUnsupportedTrainerError(
            f"loli_plugin.LoliClustered is being built inside {trainer}, "
            f"but loli-plugin's {short} integration is not "
            + (
                "installed: " + "; ".join(r for _, r in self.problems.values())
                if self.problems
                else f"active (the start-up hook did not run: {ENV_DISABLE} is set, "
                "loli-plugin is an editable install, or Python runs without site)"
            )
            + f". Without it {short} would draw its stock timesteps and the cluster banks would not match "
            f"them. Unset {ENV_DISABLE}, install loli-plugin with `pip install` (not -e), or start the script with "
            "`python -m loli_plugin.launch SCRIPT ...`. Supported: " + self.supported
        )

    def layout_error(self, folder: Path, problem: str) -> LoliUnsupportedTrainerError:
        """For ``on_optimizer_created``: a LoliClustered is being built inside a layout of this trainer that
        no patch of this adapter reaches (``problem`` says why)."""
        layout = self.layout
        return LoliUnsupportedTrainerError(
            f"loli_plugin.LoliClustered is being built inside {layout.describe(folder)}, but {problem}. "
            f"loli-plugin cannot make this {layout.library} draw one cluster's timesteps per step, so it would "
            f"train with its stock timesteps under the cluster banks. Supported: {layout.minimum} or later "
            f"({self.supported}). Update {layout.library} to {layout.minimum} or later, or train without "
            f"loli_plugin.LoliClustered; in a training loop of your own, do not import {layout.package}."
        )

    def _patch(self, name: str) -> Patch | None:
        for inst, _ in self.instrumentors():
            for p in inst.patches:
                if p.name == name:
                    return p
        return None

    # ------------------------------------------------------------------ run lifecycle
    def building_optimizer(self, *call):
        """The entry patch's block around the trainer's optimizer-building call: a ``LoliClustered`` built
        inside it starts the run of ``call`` (``activate(*call, optimizer=...)``)."""
        return pushed(self._building, call)

    def inside_trainer(self) -> bool:
        """Is this trainer's package imported in this process (and really the trainer's)? A ``LoliClustered``
        built then belongs to it."""
        return self.layout is not None and self.layout.imported() is not None

    def is_applied(self, patch: Patch) -> bool:
        return any(inst.is_applied(patch) for inst, _ in self.instrumentors())

    def on_optimizer_created(self, optimizer) -> None:
        """A ``LoliClustered`` was built, by any route. Never the stock sampler under it: when this
        trainer's package is imported, either its optimizer-building call built it (inside
        ``building_optimizer``: that call's run starts), or the user's own code did, beside a trainer whose
        ``entry_patch`` is in place or whose entry module is not even imported. Any other way (a layout no
        patch reaches: older, newer, a fork; the start-up hook off) the trainer would train with its stock
        timesteps under the cluster banks, so it is refused here, before any step. Without a package of
        this trainer (a plain PyTorch loop) nothing happens."""
        if self.entry_patch is None or not self.inside_trainer():
            return
        if self._building:
            self.activate(*self._building[-1], optimizer=optimizer)
            return
        package = self.layout.imported() if self.layout is not None else None
        folder = package_folder(package) if package is not None else None
        if self.entry_patch.module in sys.modules:
            if self.is_applied(self.entry_patch):
                return  # the user's own code, outside the trainer's (patched) optimizer factory
            raise self.not_integrated_error(folder)
        problem = self.layout.layout_problem(folder, self.entry_patch.module) if folder is not None else None
        if problem is not None:
            raise self.layout_error(folder, problem)
        # the trainer's optimizer factory is not imported: the user's own loop beside the trainer's helpers

    def describe(self, run) -> str:
        """The run in one line, printed when it starts ("loli-plugin active: ...")."""
        return "; ".join(run.describe()) or "nothing"

    def deactivate(self) -> None:
        """Forget the run and undo the run-scope patches (tests; a second run in one process)."""
        self.run = None
        for inst, scope in self.instrumentors():
            if scope == "run":
                inst.uninstrument()

    def uninstrument(self) -> None:
        """Undo every patch of this adapter."""
        self.run = None
        for inst, _ in reversed(self.instrumentors()):
            inst.uninstrument()


# --------------------------------------------------------------------------- registry and dispatch
def adapters() -> list[TrainerAdapter]:
    """Every registered trainer adapter (the ``loli_trainer_adapters`` hook)."""
    from .plugins import trainer_adapters

    return trainer_adapters()


def adapter(name: str) -> TrainerAdapter:
    for a in adapters():
        if a.name == name:
            return a
    raise KeyError(f"no loli-plugin adapter named {name!r}; installed: {', '.join(a.name for a in adapters())}")


def on_watched_import(module) -> None:
    """Called by the start-up finder after a watched module ran. Never raises for a plain run: only a
    Loli run in progress may be stopped (its adapter's ``require``)."""
    try:
        watching = [a for a in adapters() if module.__name__ in a.watches]
    except Exception as exc:  # a broken plugin install: report once, let the trainer run
        warn(
            f"cannot load its trainer adapters ({type(exc).__name__}: {exc}); "
            f"{module.__name__} runs without loli-plugin. {ENV_DISABLE}=1 turns it off."
        )
        return
    for a in watching:
        try:
            a.on_import(module)
        except LoliUnsupportedTrainerError as exc:
            if a.run is not None or exc.refused_at_import:
                raise  # a Loli run asked for this trainer: stop it now, not after training stock
        except Exception as exc:
            a.fail(f"import of {module.__name__}", exc)


def optimizer_created(optimizer) -> None:
    """The one announcement of a new ``LoliClustered`` (which makes it itself): one ``loli_optimizer_created``
    hook call, which tells the trainer adapters first, then the observers (``plugins._AdapterEvents``)."""
    from .plugins import get_plugin_manager

    get_plugin_manager().hook.loli_optimizer_created(optimizer=optimizer)


@contextlib.contextmanager
def pushed(stack: list, value):
    """Push ``value`` on ``stack`` for the duration of a block (the arguments of a call in progress)."""
    stack.append(value)
    try:
        yield value
    finally:
        stack.pop()
