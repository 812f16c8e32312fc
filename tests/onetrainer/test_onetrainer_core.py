"""LOLI_CLUSTERED in the real OneTrainer: registration, configs, create_optimizer, backups, the timestep
sampler for every TimestepDistribution, the cosine loss strength and the TensorBoard scalars."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from types import SimpleNamespace

import pytest
import torch

from loli_plugin import LoliClustered, LoliConfigError
from loli_plugin.adapters.onetrainer import ADAPTER as adapter

from ..drift_support import check_uninstrument_restores_originals


def make_config(ot, inner="ADAMW", clusters=4, **optimizer_values):
    cfg = ot.TrainConfig.default_values()
    cfg.optimizer.optimizer = ot.Optimizer.LOLI_CLUSTERED
    cfg.optimizer.from_dict(
        {
            "loli_inner": inner,
            "loli_clusters": clusters,
            "fused": False,
            "foreach": False,
            "stochastic_rounding": False,
            **optimizer_values,
        }
    )
    cfg.learning_rate = 1e-2
    return cfg


def collection(ot, seed=0, text_encoder_lr=5e-3):
    from modules.util.NamedParameterGroup import NamedParameterGroup, NamedParameterGroupCollection

    g = torch.Generator().manual_seed(seed)
    coll = NamedParameterGroupCollection()
    coll.add_group(
        NamedParameterGroup(
            "unet",
            [torch.nn.Parameter(torch.randn(8, 4, generator=g)), torch.nn.Parameter(torch.randn(4, generator=g))],
            1e-2,
        )
    )
    coll.add_group(
        NamedParameterGroup("text_encoder", [torch.nn.Parameter(torch.randn(6, 3, generator=g))], text_encoder_lr)
    )
    return coll


def step(opt, params, n, start=0):
    for s in range(start, start + n):
        for p in params:
            p.grad = torch.sin(p.detach() * (s + 1)) + 0.1
        opt.step()
        opt.zero_grad()


# ----------------------------------------------------------------------------- registration and configs
def test_member_defaults_and_fields_are_registered(ot):
    member = ot.Optimizer.LOLI_CLUSTERED
    assert member.value == member.name == "LOLI_CLUSTERED" and ot.Optimizer["LOLI_CLUSTERED"] is member
    assert member in list(ot.Optimizer) and not member.is_schedule_free and not member.supports_fused_back_pass()
    defaults = ot.optimizer_util.OPTIMIZER_DEFAULT_PARAMETERS[member]
    assert {"loli_inner": "ADAMW", "loli_clusters": 10, "loli_schedule": "shuffle"}.items() <= defaults.items()
    cfg = ot.TrainConfig.default_values()
    assert cfg.cos_strength == 0.0 and cfg.optimizer.loli_inner == "ADAMW"


def test_config_survives_save_and_load(ot, tmp_path):
    cfg = make_config(ot, inner="PRODIGY", clusters=7, loli_schedule="round_robin", d_coef=2.0)
    cfg.cos_strength = 0.2
    cfg.mse_strength, cfg.mae_strength = 0.4, 0.4
    from modules.util.optimizer_util import update_optimizer_config

    update_optimizer_config(cfg)  # what the optimizer window does on close: per-optimizer saved settings
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_settings_dict(secrets=False)))
    out = io.StringIO()
    with redirect_stdout(out):
        loaded = ot.TrainConfig.default_values().from_dict(json.loads(path.read_text()))
    assert "Could not set" not in out.getvalue()
    assert loaded.optimizer.optimizer is ot.Optimizer.LOLI_CLUSTERED
    assert (loaded.optimizer.loli_inner, loaded.optimizer.loli_clusters, loaded.optimizer.loli_schedule) == (
        "PRODIGY",
        7,
        "round_robin",
    )
    assert loaded.optimizer.d_coef == 2.0 and loaded.cos_strength == 0.2 and loaded.mae_strength == 0.4
    assert loaded.optimizer_defaults["LOLI_CLUSTERED"].loli_clusters == 7


# ----------------------------------------------------------------------------- create_optimizer
@pytest.mark.parametrize("inner", ["ADAMW", "ADAMW_8BIT", "PRODIGY", "LION", "CAME"])
def test_create_optimizer_builds_loli_clustered(ot, inner):
    if inner == "ADAMW_8BIT":
        pytest.importorskip("bitsandbytes")
    coll = collection(ot, text_encoder_lr=None if inner == "PRODIGY" else 5e-3)  # Prodigy: one lr for all groups
    opt = ot.create.create_optimizer(coll, None, make_config(ot, inner=inner))
    assert isinstance(opt, LoliClustered) and opt.clusters == 4 and opt.inner_name == inner
    assert [g["name"] for g in opt.param_groups] == ["unet", "text_encoder"]
    assert opt.param_groups is opt.inner.param_groups  # shared: LambdaLR, scaler and LR logging hold these dicts
    run = adapter.run
    assert run.optimizer is opt and run.inner == inner
    if inner == "ADAMW_8BIT" and not bnb_runs_on_cpu():
        pytest.skip(
            "built; stepping skipped: this bitsandbytes (OneTrainer pins 0.49.1) has no CPU kernels for AdamW8bit"
        )
    step(opt, [p for g in opt.param_groups for p in g["params"]], 3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    assert sched.get_last_lr() == [g["initial_lr"] * 0.5 for g in opt.param_groups]


def bnb_runs_on_cpu() -> bool:
    import bitsandbytes as bnb

    p = torch.nn.Parameter(torch.zeros(4096))
    p.grad = torch.ones(4096)
    try:
        bnb.optim.AdamW8bit([p]).step()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no CPU path"
        return False


def test_k1_equals_onetrainers_own_inner_bit_for_bit(ot):
    a, b = collection(ot), collection(ot)
    loli = ot.create.create_optimizer(a, None, make_config(ot, inner="ADAMW", clusters=1))
    cfg = make_config(ot)
    cfg.optimizer.optimizer = ot.Optimizer.ADAMW
    plain = ot.create.create_optimizer(b, None, cfg)
    assert type(plain) is torch.optim.AdamW
    pa = [p for g in loli.param_groups for p in g["params"]]
    pb = [p for g in plain.param_groups for p in g["params"]]
    step(loli, pa, 6)
    step(plain, pb, 6)
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))


def test_normalized_momentum_inner_is_offered_and_built(ot):
    """ADAMW_CLUSTERED_SECOND_MOMENT_NORMALIZED: the same optimizer with momentum="normalized" (the
    bounded variant), configured by ADAMW's rows."""
    loli = ot.create.create_optimizer(
        collection(ot), None, make_config(ot, inner="ADAMW_CLUSTERED_SECOND_MOMENT_NORMALIZED", clusters=3)
    )
    assert loli.inner.defaults["momentum"] == "normalized" and loli.clusters == 3
    raw = ot.create.create_optimizer(
        collection(ot), None, make_config(ot, inner="ADAMW_CLUSTERED_SECOND_MOMENT", clusters=3)
    )
    assert raw.inner.defaults["momentum"] == "raw"


@pytest.mark.parametrize("fused, foreach", [(True, False), (False, False), (False, True)])
def test_clustered_second_moment_inner_from_adamws_rows(ot, fused, foreach):
    """The plugin-owned inner ADAMW_CLUSTERED_SECOND_MOMENT is configured by ADAMW's rows; at K=1 it is
    OneTrainer's own ADAMW bit for bit (fused=True, OneTrainer's default, runs its foreach path)."""
    from loli_plugin.clustered_second_moment import AdamWClusteredSecondMoment

    a, b = collection(ot), collection(ot)
    loli = ot.create.create_optimizer(
        a, None, make_config(ot, inner="ADAMW_CLUSTERED_SECOND_MOMENT", clusters=1, fused=fused, foreach=foreach)
    )
    assert isinstance(loli.inner, AdamWClusteredSecondMoment) and loli.inner_name == "ADAMW_CLUSTERED_SECOND_MOMENT"
    assert loli.inner.defaults["foreach"] == (fused or foreach) and [g["name"] for g in loli.param_groups] == [
        "unet",
        "text_encoder",
    ]
    cfg = make_config(ot, foreach=fused or foreach)
    cfg.optimizer.optimizer = ot.Optimizer.ADAMW
    plain = ot.create.create_optimizer(b, None, cfg)
    pa = [p for g in loli.param_groups for p in g["params"]]
    pb = [p for g in plain.param_groups for p in g["params"]]
    step(loli, pa, 6)
    step(plain, pb, 6)
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))


@pytest.mark.parametrize(
    "values, match",
    [
        ({"loli_inner": "NOPE"}, r"Inner Optimizer \(optimizer.loli_inner\) is 'NOPE'"),
        ({"loli_inner": "ADAMW_CLUSTERED_SECOND_MOMENT", "amsgrad": True}, "does not implement 'AMSGrad'"),
        (
            {"loli_inner": "ADAMW_CLUSTERED_SECOND_MOMENT_NORMALIZED", "capturable": True},
            "does not implement 'Capturable'",
        ),
        ({"loli_inner": "LOLI_CLUSTERED"}, "not a OneTrainer optimizer"),
        ({"loli_inner": "SCHEDULE_FREE_ADAMW"}, "schedule-free"),
        ({"loli_inner": "MUON"}, "Muon"),
        ({"fused_back_pass": True}, "Fused Back Pass is not supported"),
        ({"loli_clusters": 0}, r"Timestep Clusters \(optimizer.loli_clusters\) must be >= 1"),
        ({"loli_schedule": "sometimes"}, "unknown schedule='sometimes'"),
    ],
)
def test_bad_options_fail_before_training(ot, values, match):
    with pytest.raises(LoliConfigError, match=match):
        ot.create.create_optimizer(collection(ot), None, make_config(ot, **values))


# ----------------------------------------------------------------------------- backups
def backup(ot, opt, coll, cfg, dest):
    """OneTrainer's own saver and loader for the internal (backup) format."""
    from modules.modelLoader.mixin.InternalModelLoaderMixin import InternalModelLoaderMixin
    from modules.modelSaver.mixin.InternalModelSaverMixin import InternalModelSaverMixin
    from modules.util.TrainProgress import TrainProgress

    model = SimpleNamespace(
        optimizer=opt,
        param_group_mapping=coll.unique_name_mapping,
        train_config=cfg,
        ema=None,
        train_progress=TrainProgress(global_step=5),
    )
    InternalModelSaverMixin._save_internal_data(object(), model, str(dest))
    loaded = SimpleNamespace(optimizer_state_dict=None, ema_state_dict=None, train_progress=None)
    InternalModelLoaderMixin._load_internal_data(object(), loaded, str(dest))  # torch.load(weights_only=True)
    return loaded.optimizer_state_dict


def test_backup_and_continue_round_trips_all_banks(ot, tmp_path):
    cfg = make_config(ot, inner="PRODIGY", clusters=3)
    collection = lambda: globals()["collection"](ot, text_encoder_lr=None)  # noqa: E731 - Prodigy: one lr
    straight_coll = collection()
    straight = ot.create.create_optimizer(straight_coll, None, cfg)
    sp = [p for g in straight.param_groups for p in g["params"]]
    step(straight, sp, 8)

    coll = collection()
    opt = ot.create.create_optimizer(coll, None, cfg)
    params = [p for g in opt.param_groups for p in g["params"]]
    step(opt, params, 5)
    saved = backup(ot, opt, coll, cfg, tmp_path / "backup")
    assert saved["loli"]["clusters"] == 3 and saved["param_group_optimizer_mapping"] == ["LOLI_CLUSTERED"] * 2

    # "continue from last backup": new parameters (same values), optimizer rebuilt from the saved state
    coll2 = collection()
    for p, q in zip([p for g in coll2.parameters_for_optimizer(cfg) for p in g["params"]], params):
        p.data.copy_(q.data)
    resumed = ot.create.create_optimizer(coll2, saved, cfg)
    assert resumed.bank_steps == opt.bank_steps and resumed.schedule.step == 5
    for k in range(3):
        for a, b in zip(resumed.bank(k).values(), opt.bank(k).values()):
            assert all(torch.equal(a[key], b[key]) if torch.is_tensor(a[key]) else a[key] == b[key] for key in a)
    rp = [p for g in resumed.param_groups for p in g["params"]]
    step(resumed, rp, 3, start=5)
    assert all(torch.equal(x, y) for x, y in zip(rp, sp))
    assert [g["d"] for g in resumed.param_groups] == [g["d"] for g in straight.param_groups]


def test_backup_from_another_optimizer_starts_fresh_and_other_k_is_refused(ot, tmp_path):
    cfg = make_config(ot)
    cfg.optimizer.optimizer = ot.Optimizer.ADAMW
    coll = collection(ot)
    plain = ot.create.create_optimizer(coll, None, cfg)
    step(plain, [p for g in plain.param_groups for p in g["params"]], 2)
    saved = backup(ot, plain, coll, cfg, tmp_path / "a")
    fresh = ot.create.create_optimizer(collection(ot), saved, make_config(ot))
    assert fresh.bank_steps == [0, 0, 0, 0]  # OneTrainer re-initialises on an optimizer change; so does the plugin

    cfg4 = make_config(ot, clusters=4)
    opt = ot.create.create_optimizer(coll, None, cfg4)
    step(opt, [p for g in opt.param_groups for p in g["params"]], 2)
    saved = backup(ot, opt, coll, cfg4, tmp_path / "b")
    with pytest.raises(Exception, match="clusters"):
        ot.create.create_optimizer(collection(ot), saved, make_config(ot, clusters=6))


def test_a_spawned_rank_rebuilds_the_same_config(ot, tmp_path):
    """OneTrainer's MultiTrainer spawns fresh interpreters that rebuild the config from
    ``to_pack_dict``: the .pth hook must register LOLI_CLUSTERED there too, or that rank would
    silently train with ADAMW ("Could not set optimizer")."""
    import subprocess
    import sys

    cfg = make_config(ot, inner="LION", clusters=6)
    cfg.cos_strength = 0.2
    cfg.concepts, cfg.samples = [], []
    packed = tmp_path / "packed.json"
    packed.write_text(json.dumps(cfg.to_pack_dict(secrets=False)))
    code = (
        "import json, sys; from modules.util.config.TrainConfig import TrainConfig; "
        f"c = TrainConfig.default_values().from_dict(json.load(open({str(packed)!r}))); "
        "print(c.optimizer.optimizer, c.optimizer.loli_inner, c.optimizer.loli_clusters, c.cos_strength)"
    )
    env = {**__import__("os").environ, "PYTHONPATH": f"{ot.dir}:{ot.mgds_dir / 'src'}"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ot.dir, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Could not set" not in out.stdout
    assert out.stdout.split()[-4:] == ["LOLI_CLUSTERED", "LION", "6", "0.2"]


def test_uninstrument_puts_every_original_object_back(ot):
    import modules.ui.BaseOptimizerParamsWindowView  # noqa: F401 - the UI patches' modules
    import modules.ui.BaseTrainingTabView  # noqa: F401

    # enum member, lr report, defaults, 2 config factories, from_dict, create_trainer, create_optimizer,
    # 2 UI views, timesteps, 2 cosine terms, 2 loss recorders, TensorBoard, the validation's pass and end
    assert check_uninstrument_restores_originals(adapter) == 18


def test_doctor_recognises_onetrainer(ot, tmp_path):
    import subprocess
    import sys

    env = {**__import__("os").environ, "PYTHONPATH": str(ot.mgds_dir / "src")}
    out = subprocess.run(
        [sys.executable, "-m", "loli_plugin.cli", "doctor", str(ot.dir)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Nerogar/OneTrainer at" in out.stdout and "23df383" in out.stdout
    assert "modules.util.create.create_optimizer: ok" in out.stdout and "BaseTrainingTabView" in out.stdout
    assert out.stdout.strip().endswith("result: every patch fits")
