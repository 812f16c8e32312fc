"""pluggy integration: a third-party plugin found through the `loli_plugin` entry-point group."""

import textwrap

import pytest
import torch

from loli_plugin import LoliClustered, loli_loss, parse_loss_weights
from loli_plugin.plugins import get_plugin_manager

PLUGIN_SOURCE = '''
import torch
from loli_plugin import hookimpl
from loli_plugin.inner import InnerSpec


class HalfSGD(torch.optim.SGD):
    """SGD at half the requested learning rate: easy to recognise in a test."""

    def __init__(self, params, lr=0.1, **kw):
        super().__init__(params, lr=lr / 2, **kw)


def huber(pred, target, dim):
    return torch.nn.functional.huber_loss(pred, target, reduction="none", delta=1.0)


@hookimpl
def loli_inner_optimizers():
    return {"HalfSGD": InnerSpec(HalfSGD)}


@hookimpl
def loli_loss_terms():
    return {"huber": huber}


LOGGED = []


@hookimpl
def loli_log(step, logs):
    LOGGED.append((step, dict(logs)))
'''


@pytest.fixture
def third_party_plugin(tmp_path, monkeypatch):
    """Install a tiny distribution with a `loli_plugin` entry point onto sys.path."""
    (tmp_path / "loli_ext_demo.py").write_text(PLUGIN_SOURCE)
    dist = tmp_path / "loli_ext_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: loli-ext-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent("""\
        [loli_plugin]
        demo = loli_ext_demo
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    get_plugin_manager.cache_clear()
    yield __import__("loli_ext_demo")
    get_plugin_manager.cache_clear()


def test_entry_point_plugin_adds_an_inner_optimizer_and_a_loss_term(third_party_plugin):
    pm = get_plugin_manager()
    assert pm.get_plugin("demo") is third_party_plugin
    p = torch.nn.Parameter(torch.ones(3))
    opt = LoliClustered([p], inner="halfsgd", clusters=2, lr=0.2)
    assert type(opt.inner).__name__ == "HalfSGD" and opt.param_groups[0]["lr"] == pytest.approx(0.1)
    p.grad = torch.ones(3)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((3,), 0.9))

    pred, target = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 3.0)
    assert parse_loss_weights("mse=1,huber=0.5") == {"mse": 1.0, "huber": 0.5}
    expected = (pred - target) ** 2 + 0.5 * torch.nn.functional.huber_loss(pred, target, reduction="none")
    torch.testing.assert_close(loli_loss(pred, target, "mse=1,huber=0.5"), expected)


def test_log_events_reach_plugins(third_party_plugin):
    from loli_plugin import ClusterLossMonitor

    mon = ClusterLossMonitor(clusters=2, warmup=1)
    mon.update(1, torch.tensor(0.5))
    logs = mon.logs()
    assert third_party_plugin.LOGGED[-1] == (1, logs)


def test_without_the_plugin_its_names_are_unknown():
    get_plugin_manager.cache_clear()
    from loli_plugin import LoliConfigError

    with pytest.raises(LoliConfigError, match="unknown inner optimizer"):
        LoliClustered([torch.nn.Parameter(torch.ones(1))], inner="HalfSGD")
    with pytest.raises(LoliConfigError, match="unknown loss term 'huber'"):
        parse_loss_weights({"huber": 1.0})


def test_adafactor_inner_is_driven_by_the_hosts_learning_rate():
    """sd-scripts passes --learning_rate to every optimizer; transformers' Adafactor defaults to
    relative_step=True, which refuses a manual lr. Inside LoliClustered it runs in manual-lr mode, and
    the LR scheduler's value is the one it steps with."""
    pytest.importorskip("transformers")
    import torch

    from loli_plugin import LoliClustered

    p = [torch.nn.Parameter(torch.ones(4, 4))]
    opt = LoliClustered(p, inner="AdaFactor", clusters=2, lr=1e-2)
    assert (opt.inner.defaults["relative_step"], opt.inner.defaults["scale_parameter"]) == (False, False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 1.0 if step == 0 else 0.0
    )  # then the host sets lr 0
    p[0].grad = torch.ones(4, 4)
    opt.step()
    scheduler.step()
    before = p[0].detach().clone()
    p[0].grad = torch.ones(4, 4)
    opt.step()  # lr is 0 now: nothing moves
    assert torch.equal(p[0], before) and not torch.equal(before, torch.ones(4, 4))


def test_a_new_optimizer_is_announced_once_adapters_first_then_observers():
    """One hook call tells every trainer adapter, then every observer, each exactly once."""
    from loli_plugin.adapter import TrainerAdapter
    from loli_plugin.hookspecs import hookimpl

    calls = []

    class Recording(TrainerAdapter):
        name = "recording"

        def instrumentors(self):
            return []

        def on_optimizer_created(self, optimizer):
            calls.append(("adapter", optimizer))

    class Plugin:
        adapter = Recording()

        @hookimpl
        def loli_trainer_adapters(self):
            return [self.adapter]

        @hookimpl
        def loli_optimizer_created(self, optimizer):
            calls.append(("observer", optimizer))

    pm = get_plugin_manager()
    pm.register(Plugin(), name="test-announced-once")
    try:
        opt = LoliClustered([torch.nn.Parameter(torch.ones(1))], clusters=2)
    finally:
        pm.unregister(name="test-announced-once")
    assert calls == [("adapter", opt), ("observer", opt)]
