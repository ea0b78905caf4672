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
    # the defaults at µ = log ε: λ_0 = m/2 + (1 − m)/(1 + ε), m the loss floor
    yoto_jax = namespace["yoto_jax"]
    floor = yoto_jax.DEFAULT_LOSS_FLOOR
    initial = floor / 2 + (1 - floor) / (1 + yoto_jax.DEFAULT_EPS)
    assert abs(float(weights["depth"]) - initial) > 1e-3, "µ must have moved"
    # and stayed within the loss floor: every weight >= m/T
    assert min(float(w) for w in weights.values()) >= floor / 2 - 1e-6
    assert "depth" in capsys.readouterr().out
