"""The README's quickstart runs as written and learns weights."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs_and_moves_the_weights(capsys):
    text = README.read_text()
    section = text.split("## Quickstart", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    weights = namespace["model"].loss_weights.weights()
    assert set(weights) == {"depth", "segmentation"}
    assert abs(float(sum(weights.values())) - 1.0) < 1e-6
    # the module's default floor 1/(K+1) = 1/2: λ'_0 = 1/2 + 1/2 · 1/(1 + ε) at µ = log ε
    initial = 0.5 + 0.5 / (1 + namespace["yoto_jax"].DEFAULT_EPS)
    assert abs(float(weights["depth"]) - initial) > 1e-3, "µ must have moved"
    assert "depth" in capsys.readouterr().out
