"""Without OneTrainer: the launcher's old name ``python -m loli_plugin.onetrainer`` still runs a script as
``__main__`` (users' commands call it). Marked ``standin``: runs wherever loli-plugin is installed."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.standin


def test_the_launchers_old_name_runs_the_script_as_main(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import sys\nif __name__ == '__main__':\n    print('main', sys.argv[1:])\n")
    env = {**os.environ, "LOLI_PLUGIN_DISABLE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "loli_plugin.onetrainer", str(script), "--config-path", "c.json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0 and out.stdout.strip() == "main ['--config-path', 'c.json']", out.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "loli_plugin.onetrainer", "no_such_script.py"], capture_output=True, text=True, env=env
    )
    assert bad.returncode != 0 and "no such script" in bad.stderr
