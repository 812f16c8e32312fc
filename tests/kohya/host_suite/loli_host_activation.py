"""A pytest plugin for running sd-scripts' OWN test suite with loli-plugin active (``-p
loli_host_activation``): at session start it builds a LoliClustered through sd-scripts' real
``get_optimizer`` with ``--optimizer_type LoliClustered --loss_type loli``, which activates the run (loss,
timestep and tracker patches in place for every test that follows)."""

import sys


def pytest_sessionstart(session):
    import torch
    import train_network
    from library import train_util

    args = train_network.setup_parser().parse_args(
        [
            "--pretrained_model_name_or_path",
            "unused",
            "--learning_rate",
            "1e-3",
            "--optimizer_type",
            "LoliClustered",
            "--optimizer_args",
            "inner=AdamW",
            "clusters=4",
            "--loss_type",
            "loli",
        ]
    )
    _, _, optimizer = train_util.get_optimizer(args, [torch.nn.Parameter(torch.zeros(4))])
    from loli_plugin.adapters.kohya import ADAPTER

    assert ADAPTER.run is not None and type(optimizer).__name__ == "LoliClustered", "loli-plugin did not activate"
    session.config._loli_optimizer = optimizer  # keep it alive: the run follows its clusters
    print(
        f"loli-plugin active for sd-scripts' own suite: {type(optimizer).__name__}, clusters={optimizer.clusters}",
        file=sys.stderr,
    )
