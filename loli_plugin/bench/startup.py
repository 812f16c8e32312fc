"""``loli-plugin bench startup``: what the start-up hook costs every Python process of the trainer's venv.

Runs ``PYTHON -c pass`` many times, interleaved, with the plugin installed and with
``LOLI_PLUGIN_DISABLE=1`` (the ``.pth`` line still runs, the finder is not installed), and reports the
median wall time of each, the difference, the modules the hook loads (from ``-X importtime``) and the
hook's own import time. Run it with the trainer venv's Python: ``loli-plugin bench startup --python
/path/to/venv/bin/python``.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time


def _start(python: str, disable: bool, flags=()) -> subprocess.CompletedProcess:
    env = {**os.environ}
    env.pop("LOLI_PLUGIN_DISABLE", None)
    if disable:
        env["LOLI_PLUGIN_DISABLE"] = "1"
    return subprocess.run([python, *flags, "-c", "pass"], env=env, capture_output=True, text=True, check=True)


def _importtime(python: str, disable: bool) -> dict[str, int]:
    """{module: cumulative microseconds} from ``-X importtime`` of one start."""
    out = {}
    for line in _start(python, disable, ("-X", "importtime")).stderr.splitlines():
        m = re.match(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|\s*(\S+)", line)
        if m:
            out[m.group(3)] = int(m.group(2))
    return out


def run(args) -> int:
    python = args.python
    probe = subprocess.run(
        [python, "-c", "import _loli_plugin_autoload as a, wrapt; print(a.INSTALLED, wrapt.__version__)"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        print(
            f"loli-plugin bench startup: error: {python} has no installed loli-plugin start-up hook or no wrapt "
            f"({probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else 'no output'})",
            file=sys.stderr,
        )
        return 2
    installed, wrapt_version = probe.stdout.split()
    for disable in (False, True):  # warm the file cache
        _start(python, disable)
    times = {False: [], True: []}
    for _ in range(args.runs):
        for disable in (False, True):
            t0 = time.perf_counter()
            _start(python, disable)
            times[disable].append(1e3 * (time.perf_counter() - t0))
    on, off = statistics.median(times[False]), statistics.median(times[True])
    with_hook, without = _importtime(python, False), _importtime(python, True)
    extra = sorted(set(with_hook) - set(without))
    print(
        f"# python: {python} | wrapt {wrapt_version} | hook installed: {installed} "
        f"| {args.runs} starts each, interleaved"
    )
    print("| | median wall ms (`python -c pass`) |")
    print("|---|---|")
    print(f"| plugin installed | {on:.1f} |")
    print(f"| LOLI_PLUGIN_DISABLE=1 | {off:.1f} |")
    print(f"| difference | {on - off:+.2f} |")
    print(
        f"\nmodules loaded only with the plugin: {', '.join(extra) or 'none'}; "
        f"_loli_plugin_autoload's own import: {with_hook.get('_loli_plugin_autoload', 0)} us "
        f"(with LOLI_PLUGIN_DISABLE=1: {without.get('_loli_plugin_autoload', 0)} us)"
    )
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "startup", help="interpreter start-up time with the plugin's start-up hook vs LOLI_PLUGIN_DISABLE=1"
    )
    p.add_argument("--python", default=sys.executable, help="the Python of the venv to measure (default: this one)")
    p.add_argument("--runs", type=int, default=40, help="starts per variant (default 40)")
    p.set_defaults(func=run)
