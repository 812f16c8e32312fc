"""Benchmarks, the demo and the tiny digits task they share: tools around the plugin, not part of it.

``loli-plugin bench optimizer|sampler|quality|make-base|gradients`` and ``loli-plugin demo``; nothing in the
core imports this package.
"""

from __future__ import annotations


def add_bench_parsers(sub) -> None:
    """The ``bench`` subcommands."""
    from . import base, gpu, gradients, optimizer, quality, sampler, startup

    optimizer.add_parser(sub)
    sampler.add_parser(sub)
    quality.add_parser(sub)
    startup.add_parser(sub)
    gpu.add_parser(sub)
    base.add_parser(sub)
    gradients.add_parser(sub)
