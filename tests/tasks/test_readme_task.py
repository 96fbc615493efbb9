"""The README's "Your own task" example, run as it is (on the fake engine, as tests/test_api.py runs the API
example: the real engine's search of it takes about a minute with a fresh latency table)."""

import re
from pathlib import Path

import torch

from tests.test_api import cpu_is_the_fake_engine  # noqa: F401  (a fixture)

README = Path(__file__).resolve().parents[2] / "README.md"


def task_example() -> str:
    text = README.read_text()
    marker = text.index("<!-- task-example")
    return re.search(r"```python\n(.*?)```", text[marker:], re.S).group(1)


def test_the_readme_task_example_runs_as_it_is(tmp_path, monkeypatch, capsys, cpu_is_the_fake_engine):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(task_example(), "README.md", "exec"), scope)
    plan, model, export, metric = scope["plan"], scope["model"], scope["export"], scope["metric"]
    assert plan.measured_ms <= plan.baseline_ms * 0.5 * 1.01  # the budget, as measured (on the fake engine here)
    assert [m.out_channels for m in model.body if isinstance(m, torch.nn.Conv2d)] == list(plan.keep_channels.values())
    assert export.outputs == ("boxes", "classes") and (tmp_path / "engines" / "heads.onnx").is_file()
    out = capsys.readouterr().out
    onnx_metric = float(re.search(r"'metric': ([0-9.]+)", out).group(1))
    assert abs(onnx_metric - metric(model.eval())) < 0.5  # the delivered file scores as the torch model does
