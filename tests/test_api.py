"""The Python API: the README's example runs as it is, and the stages work on live modules."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch

import trtprune
from trtprune.latency import devices

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    marker = text.index("<!-- api-example")
    return re.search(r"```python\n(.*?)```", text[marker:], re.S).group(1)


@pytest.fixture
def cpu_is_the_fake_engine(monkeypatch):
    """The example names device "cpu"; its real-engine search takes 1-1.5 minutes here (a fresh latency table,
    100-round confirmations), so this test times it on the deterministic fake engine instead. The ONNX Runtime
    path of the same stages runs in test_cli and test_zoo."""
    monkeypatch.setitem(devices.DEVICES, "cpu", dataclasses.replace(devices.DEVICES["cpu"], backend="fake"))


def test_the_readme_example_runs_as_it_is(tmp_path, monkeypatch, capsys, cpu_is_the_fake_engine):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)
    plan, model, engine = scope["plan"], scope["model"], scope["engine"]
    assert plan.measured_ms <= plan.baseline_ms * 0.5 * 1.01  # the budget, as measured (on the fake engine here)
    assert [m.out_channels for m in model if isinstance(m, torch.nn.Conv2d)] == list(plan.keep_channels.values())
    assert engine.path == Path("engines/mine.onnx") and (tmp_path / "engines" / "mine.onnx").is_file()
    assert "top1" in capsys.readouterr().out


def test_the_stages_on_a_live_module(tmp_path, cpu_is_the_fake_engine):
    from tests import zoo

    model = zoo.concat_net()
    x = torch.randint(0, 255, (96, 32, 32, 3), dtype=torch.uint8).numpy()
    y = (torch.arange(96) % 10).numpy()
    channels = {g.name: g.channels for g in trtprune.groups(model, (3, 32, 32))}
    s = trtprune.scores(model, (3, 32, 32), data=(x, y))
    assert set(s) == set(channels) and all(s[n].shape == (c,) for n, c in channels.items())
    dense = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    plan = trtprune.search(model, (3, 32, 32), "cpu", "0.6x", data=(x, y), lut=tmp_path / "l.sqlite")
    assert [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)] == dense  # left as it is
    trtprune.prune(model, plan, (3, 32, 32), data=(x, y))
    assert {g.name: g.channels for g in trtprune.groups(model, (3, 32, 32))} == plan.keep_channels
    assert model.trtprune_history and model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    base = trtprune.export(zoo.concat_net(), tmp_path / "base.onnx", (3, 32, 32))
    pruned = trtprune.build(model, (3, 32, 32), "cpu", tmp_path / "pruned.onnx")
    timings = trtprune.measure([base.path, pruned], "cpu", rounds=3)
    assert len(timings) == 2 and timings[1].median_ms < timings[0].median_ms
    records = trtprune.finetune(model, (x, y), (x[:32], y[:32]), epochs=1, batch_size=32, lr=0.01)
    assert len(records) == 1 and 0 <= records[0]["top1"] <= 100
    assert set(trtprune.evaluate(tmp_path / "pruned.onnx", (x[:32], y[:32]))) == {"top1"}
