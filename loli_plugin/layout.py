"""Which trainer a process runs, told from its package's files: the data behind "never the stock sampler
under LoliClustered".

Each adapter declares a ``TrainerLayout``: the trainer's top-level package, the files that make a
package of that name the trainer's (some trainers use generic names, shared with other projects), the
supported minimum, where the package sits in a checkout, and the older layouts loli-plugin knows it does
not support (``adapters/*.py`` hold the declarations). With it the adapter layer
(``TrainerAdapter.on_optimizer_created``) can tell, when a LoliClustered is built:

* no package of this trainer is imported: a plain PyTorch loop, which keeps working;
* the trainer is imported and its optimizer factory is patched: the adapter's run starts (or the user's
  own code built it outside that factory);
* the trainer is imported in a layout the adapter does not fit (an older or newer version, a fork, the
  start-up hook off): the run is refused before its first step, with the trainer, its version, the
  supported minimum and what to do, instead of training with the trainer's stock timesteps.

Reading files only (no trainer module is imported here); a version's commit may ask git, on the error
path only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OldLayout:
    """A layout of the trainer that loli-plugin knows and does not support."""

    #: what it is, as a user would recognise it: where its main class lived, which versions had it
    what: str
    #: files (relative to the package folder) this layout has, and files it lacks
    present: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()

    def matches(self, folder: Path) -> bool:
        return all((folder / f).exists() for f in self.present) and not any((folder / f).exists() for f in self.absent)


@dataclass(frozen=True)
class TrainerLayout:
    #: the trainer's top-level package
    package: str
    #: the trainer as users know it (its GitHub owner/name)
    library: str
    #: the oldest version loli-plugin supports, as users name versions ("v0.3.4", "commit 23df383 (2026-08-19)")
    minimum: str
    #: files of the package folder that make a package of this name the trainer's (at least two of them
    #: must exist, or all when fewer are listed); empty: the name is the trainer's alone
    markers: tuple[str, ...] = ()
    #: where the package folder sits in a checkout ("src" for a src/ layout)
    roots: tuple[str, ...] = (".",)
    #: the distribution pip knows it by (its version when it is installed from site-packages)
    distribution: str | None = None
    old: tuple[OldLayout, ...] = ()

    # ------------------------------------------------------------------ the trainer in this process
    def imported(self):
        """The trainer's package if it is imported in this process (and really the trainer's), else None."""
        module = sys.modules.get(self.package)
        return module if module is not None and self.recognises(module) else None

    def recognises(self, module) -> bool:
        folder = package_folder(module)
        return folder is not None and self.is_package_folder(folder)

    def is_package_folder(self, folder: Path) -> bool:
        if not self.markers:
            return True
        needed = min(2, len(self.markers))
        return sum((folder / f).exists() for f in self.markers) >= needed

    def has_module(self, folder: Path, module: str) -> bool:
        """Does this package folder hold ``module`` (a dotted name inside the package)?"""
        parts = module.split(".")
        if parts[0] != self.package:
            return False
        rel = Path(*parts[1:]) if len(parts) > 1 else Path()
        return (folder / rel).with_suffix(".py").is_file() or (folder / rel / "__init__.py").is_file()

    def old_layout(self, folder: Path) -> OldLayout | None:
        return next((o for o in self.old if o.matches(folder)), None)

    # ------------------------------------------------------------------ a checkout (doctor)
    def find_package(self, path: Path) -> Path | None:
        """The trainer's package folder inside the checkout ``path``, if there is one."""
        for root in self.roots:
            folder = path / root / self.package
            if (folder / "__init__.py").is_file() or (folder.is_dir() and self.markers):
                if self.is_package_folder(folder):
                    return folder
        return None

    # ------------------------------------------------------------------ what a user is told
    def version(self, folder: Path) -> str:
        """The version and commit, e.g. "1.2.3, commit 1234567", "commit 1234567", or "" when nothing tells."""
        root = tree_root(folder, self.roots)
        parts = []
        version = _pyproject_version(root, self.distribution) if root is not None else None
        if version is None and root is None and self.distribution:
            version = _installed_version(self.distribution)
        if version:
            parts.append(version)
        commit = _commit(root) if root is not None else None
        if commit:
            parts.append(f"commit {commit[:7]}")
        return ", ".join(parts)

    def describe(self, folder: Path) -> str:
        """The trainer, its version and where it is: "owner/name 1.2.3, commit 1234567 (at PATH)"."""
        version = self.version(folder)
        return f"{self.library}{' ' + version if version else ''} (at {folder})"

    def layout_problem(self, folder: Path, entry: str) -> str | None:
        """Why this package folder is not a layout loli-plugin fits (``entry``: the module where its runs
        start), or None when it has that module."""
        old = self.old_layout(folder)
        if old is not None:
            return f"{old.what} is a layout loli-plugin does not support"
        if not self.has_module(folder, entry):
            rel = entry.split(".", 1)[1].replace(".", "/") + ".py" if "." in entry else "__init__.py"
            return (
                f"it has no {self.package}/{rel}, where loli-plugin's integration starts: a layout loli-plugin "
                "does not know (an older or newer version, or a fork)"
            )
        return None


def package_folder(module) -> Path | None:
    paths = list(getattr(module, "__path__", None) or ())
    if paths:
        return Path(paths[0])
    file = getattr(module, "__file__", None)
    return Path(file).parent if file else None


def tree_root(folder: Path, roots: tuple[str, ...]) -> Path | None:
    """The checkout the package folder belongs to (it holds .git, .exported-commit, pyproject.toml or
    setup.py), or None for a package installed in site-packages."""
    for root in roots:
        candidate = folder.parent if root in (".", "") else folder.parent.parent
        if any((candidate / f).exists() for f in (".git", ".exported-commit", "pyproject.toml", "setup.py")):
            return candidate
    return None


def _pyproject_version(root: Path, distribution: str | None) -> str | None:
    path = root / "pyproject.toml"
    if distribution is None or not path.is_file():
        return None
    try:
        try:
            import tomllib

            project = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {})
        except ModuleNotFoundError:  # Python 3.10
            import toml

            project = toml.loads(path.read_text(encoding="utf-8")).get("project", {})
    except Exception:  # a file we cannot read tells nothing
        return None
    if str(project.get("name", "")).replace("_", "-").lower() != distribution.lower():
        return None
    version = project.get("version")
    return str(version) if version else None


def _installed_version(distribution: str) -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version(distribution)
    except (ImportError, PackageNotFoundError):
        return None


def _commit(root: Path) -> str | None:
    exported = root / ".exported-commit"
    if exported.is_file():
        return exported.read_text().strip() or None
    if (root / ".git").exists():
        try:
            proc = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
                env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() or None if proc.returncode == 0 else None
    return None
