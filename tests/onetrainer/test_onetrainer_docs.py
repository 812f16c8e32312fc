"""What docs/onetrainer.md and the README tell a OneTrainer user to put in a config is what OneTrainer reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def saved_with(ot, fragment: dict):
    """A config as OneTrainer saves it, with ``fragment``'s keys set as a user edits the file, read back."""

    def merge(into: dict, keys: dict) -> dict:
        for key, value in keys.items():
            into[key] = (
                merge(into[key], value) if isinstance(value, dict) and isinstance(into.get(key), dict) else value
            )
        return into

    saved = json.loads(json.dumps(ot.TrainConfig.default_values().to_settings_dict(secrets=False)))
    return ot.TrainConfig.default_values().from_dict(merge(saved, fragment))


def test_docs_config_block_loads_as_a_loli_run(ot):
    text = (ROOT / "docs" / "onetrainer.md").read_text()
    block = re.search(r"```json\n(.*?)```", text, re.S).group(1)
    config = saved_with(ot, json.loads(block))
    assert config.optimizer.optimizer == ot.Optimizer.LOLI_CLUSTERED
    assert (config.optimizer.loli_inner, config.optimizer.loli_clusters, config.optimizer.loli_schedule) == (
        "ADAMW_8BIT",
        10,
        "shuffle",
    )
    assert (config.mse_strength, config.mae_strength, config.cos_strength) == (0.4, 0.4, 0.2)
    assert (config.loli_probe, config.loli_probe_every) == ("auto", 100)
    assert ot.patches.requests_probe(config)


def test_readme_config_keys_are_onetrainer_fields(ot):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quick start: Nerogar/OneTrainer") :]
    section = section[: section.index("\n## ")]
    fragment = "{" + ", ".join(re.findall(r"`(\"[a-z_]+\": [^`]+)`", section)) + "}"
    config = saved_with(ot, json.loads(fragment))
    assert config.optimizer.optimizer == ot.Optimizer.LOLI_CLUSTERED and config.optimizer.loli_inner == "ADAMW_8BIT"
    assert config.cos_strength == 0.2 and config.mse_strength == 0.4
    assert "ADAMW_8BIT" in ot.Optimizer.__members__
