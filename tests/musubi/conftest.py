"""Fixtures for the tests that run the real kohya-ss/musubi-tuner.

musubi-tuner is not on PyPI and its code is never committed here. The tests find an export of it at
``$LOLI_MUSUBI_DIR`` or ``$LOLI_TRAINERS_DIR/musubi-tuner``, by default
``~/.cache/loli-plugin/trainers/musubi-tuner`` (``python scripts/get-trainers musubi-tuner`` writes it),
and run in a venv where that tree is pip-installed with its own pins and loli-plugin is installed from
a wheel (so the ``.pth`` hook is the real one). ``bash .ci/run`` builds it (``.ci/trainer-env.sh``) and
runs them; without them every test here is skipped with the reason and the commands.

Wan and FramePack cannot be imported without an NVIDIA driver: wan/modules/t5.py evaluates
``torch.cuda.current_device()`` as a default argument at import. ``import_without_driver`` imports them
with that one call answered 0 (the default is never used on CPU), so their own code (parser, sampler
override) is tested here too.
"""

from __future__ import annotations

import contextlib
import filecmp
import importlib
import sys
from pathlib import Path

import pytest

from ..trainer_support import fresh_run_fixture, how_to_get, missing_export, skip_items_below, source_dir, venv_problem

MUSUBI_DIR = source_dir("musubi-tuner")
HOW_TO = how_to_get("musubi")
PACKAGE = MUSUBI_DIR / "src" / "musubi_tuner"

#: every LoRA script: module -> (trainer class, parser setup function)
FAMILIES = {
    "hv_train_network": ("HunyuanVideoNetworkTrainer", "hv_setup_parser"),
    "hv_1_5_train_network": ("HunyuanVideo15NetworkTrainer", "hv1_5_setup_parser"),
    "wan_train_network": ("WanNetworkTrainer", "wan_setup_parser"),
    "fpack_train_network": ("FramePackNetworkTrainer", "framepack_setup_parser"),
    "qwen_image_train_network": ("QwenImageNetworkTrainer", "qwen_image_setup_parser"),
    "flux_kontext_train_network": ("FluxKontextNetworkTrainer", "flux_kontext_setup_parser"),
    "flux_2_train_network": ("Flux2NetworkTrainer", "flux2_setup_parser"),
    "flux_2_train_network_self_flow": ("Flux2SelfFlowNetworkTrainer", None),
    "zimage_train_network": ("ZImageNetworkTrainer", "zimage_setup_parser"),
    "kandinsky5_train_network": ("Kandinsky5NetworkTrainer", "kandinsky5_setup_parser"),
    "krea2_train_network": ("Krea2NetworkTrainer", "krea2_setup_parser"),
    "ideogram4_train_network": ("Ideogram4NetworkTrainer", "ideogram4_setup_parser"),
    "hidream_o1_train_network": ("HiDreamO1NetworkTrainer", "hidream_o1_setup_parser"),
}
#: options a family's parser requires
REQUIRED = {"kandinsky5_train_network": ["--task", "k5-lite-t2i-hd"]}
#: the ones whose import needs an NVIDIA driver (wan/modules/t5.py)
NEED_DRIVER = ("wan_train_network", "fpack_train_network")


def _installed_is_the_export() -> str | None:
    """The venv's musubi_tuner must be the export's code (pip installs a copy, which a new pin would leave stale)."""
    import importlib.util

    spec = importlib.util.find_spec("musubi_tuner")
    installed = Path(spec.origin).parent
    differ = [
        str(p.relative_to(PACKAGE))
        for p in sorted(PACKAGE.rglob("*.py"))
        if not (installed / p.relative_to(PACKAGE)).is_file()
        or not filecmp.cmp(p, installed / p.relative_to(PACKAGE), shallow=False)
    ]
    if differ:
        return (
            f"the venv's musubi-tuner ({installed}) is not the export at {MUSUBI_DIR} "
            f"({len(differ)} files differ, e.g. {differ[0]}); {HOW_TO}"
        )
    return None


def _skip_reason() -> str | None:
    return (
        missing_export("musubi", HOW_TO)
        or venv_problem(
            ("musubi_tuner", "torchvision", "transformers", "diffusers", "accelerate"), "musubi-tuner", HOW_TO
        )
        or _installed_is_the_export()
    )


SKIP = _skip_reason()


def pytest_collection_modifyitems(config, items):
    skip_items_below(Path(__file__).parent, SKIP, items)


@contextlib.contextmanager
def without_driver():
    """``torch.cuda.current_device()`` answers 0 instead of raising, for the duration of an import."""
    import torch

    real = torch.cuda.current_device
    torch.cuda.current_device = lambda: 0
    try:
        yield
    finally:
        torch.cuda.current_device = real


def import_family(name: str):
    """``musubi_tuner.<name>``, importing Wan's and FramePack's modules without a driver (module docstring)."""
    module = f"musubi_tuner.{name}"
    if module in sys.modules or name not in NEED_DRIVER:
        return importlib.import_module(module)
    with without_driver():
        return importlib.import_module(module)


@pytest.fixture(scope="session")
def musubi():
    """musubi-tuner's trainer_base and the plugin's musubi patches, checked to be hooked up."""
    import torch

    import _loli_plugin_autoload

    assert _loli_plugin_autoload.INSTALLED, "loli_plugin.pth did not run: install loli-plugin from a wheel (not -e)"
    # the samplers run on tensors of a few thousand elements, where intra-op threads only add synchronisation
    # (measured 10x slower with 2 threads on a busy 2-core machine)
    torch.set_num_threads(1)
    from musubi_tuner.training import trainer_base

    import loli_plugin.patches.musubi as patches

    assert patches.ENTRY.instrumented, "the post-import hook did not patch musubi_tuner.training"
    assert not patches.TRAINING.instrumented  # run scope

    class M:
        pass

    m = M()
    m.dir, m.trainer_base, m.patches = MUSUBI_DIR, trainer_base, patches
    return m


_fresh_run = fresh_run_fixture("loli_plugin.adapters.musubi")


def family_parser(name: str):
    """The parser ``<name>.main()`` builds: setup_parser_common() then the family's own options."""
    module = import_family(name)
    parser = module.setup_parser_common()
    setups = {"flux_2_train_network_self_flow": ("flux2_setup_parser", "self_flow_setup_parser")}.get(
        name, (FAMILIES[name][1],)
    )
    for setup in setups:
        parser = getattr(module, setup)(parser)
    return parser


@pytest.fixture
def parse(musubi):
    """Parse a command line with a family's real parser (default Qwen-Image)."""

    def parse(*argv, family="qwen_image_train_network"):
        args = family_parser(family).parse_args(
            ["--dit", "unused", "--learning_rate", "1e-3", *REQUIRED.get(family, []), *argv]
        )
        if family == "qwen_image_train_network":  # its main() derives is_layered/is_edit from --model_version
            from musubi_tuner.qwen_image import qwen_image_utils

            qwen_image_utils.resolve_model_version_args(args)
        return args

    return parse


@pytest.fixture
def trainer(musubi):
    """A family's real trainer object (its ``__init__``; no model is loaded)."""

    def make(family="qwen_image_train_network"):
        return getattr(import_family(family), FAMILIES[family][0])()

    return make
