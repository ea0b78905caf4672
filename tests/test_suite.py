"""The task suite's pieces: every task's loss vector and metric, the fixed rows, the paired
statistics and the leave-one-task-out choice (against hand computations)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import yoto_jax
from benchmarks.suite import analysis
from benchmarks.suite.candidates import CANDIDATES, fixed_rows
from benchmarks.suite.tasks import TASKS
from benchmarks.suite.train import QUICK, yoto_config
from benchmarks.suite.validation import validation_yoto


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_has_a_loss_per_name_and_a_scalar_metric(name):
    task = TASKS[name]()
    assert len(task.roles) == len(task.loss_names) - 1
    params = jax.eval_shape(task.init, jax.random.key(0))
    batch = jax.tree.map(lambda x: x[:8], task.data.train)
    losses = jax.eval_shape(task.losses, params, batch, jax.random.key(1))
    assert losses.shape == (len(task.loss_names),)
    assert jax.eval_shape(task.metric, params, task.data.test).shape == ()
    sizes = {len(x) for split in task.data for x in jax.tree.leaves(split)}
    assert min(sizes) >= 100  # every split holds enough examples to score


def test_the_losses_are_finite_at_initialisation():
    task = TASKS["digits_five"]()
    params = task.init(jax.random.key(0))
    batch = jax.tree.map(lambda x: x[:16], task.data.train)
    losses = np.asarray(jax.jit(task.losses)(params, batch, jax.random.key(1)))
    assert losses.shape == (5,) and np.all(np.isfinite(losses)) and np.all(losses >= 0)


@pytest.mark.parametrize(("num_losses", "grid_rows"), [(2, 3), (3, 9), (5, 27)])
def test_fixed_rows(num_losses, grid_rows):
    rows = fixed_rows(num_losses)
    grid = [v for k, v in rows.items() if k.startswith("grid_")]
    assert len(grid) == grid_rows
    np.testing.assert_array_equal(rows["equal"], np.ones(num_losses))
    np.testing.assert_array_equal(rows["primary_only"], np.eye(num_losses)[0])
    for row in grid:
        assert row[0] == 1.0 and np.all((row[1:] >= 0.01 - 1e-6) & (row[1:] <= 1.0 + 1e-6))


def test_yoto_config_resolves_the_papers_rate_and_the_uniform_floor():
    config = yoto_config(CANDIDATES["paper"], 3, QUICK)
    assert config["mu_learning_rate"] == np.float32(QUICK.learning_rate)
    assert yoto_config(CANDIDATES["default_v1"], 4, QUICK)["primary_floor"] == np.float32(0.25)


def test_paired_against_a_hand_computation():
    values = np.array([0.52, 0.50, 0.55, 0.49])
    reference = np.array([0.50, 0.50, 0.50, 0.50])
    result = analysis.paired(values, reference, higher_is_better=True)
    diff = values - reference
    se = diff.std(ddof=1) / 2.0
    assert result.mean == pytest.approx(diff.mean())
    assert result.se == pytest.approx(se)
    assert result.z == pytest.approx(diff.mean() / se)
    assert (result.wins, result.ties, result.losses) == (2, 1, 1)
    lower = analysis.paired(values, reference, higher_is_better=False)
    assert lower.mean == pytest.approx(-diff.mean()) and (lower.wins, lower.losses) == (1, 2)


def test_paired_floors_the_standard_error_at_the_resolution():
    """One test example's difference, repeated on every seed, is a tie, not infinite z."""
    reference = np.full(5, 0.9)
    result = analysis.paired(reference - 0.0005, reference, higher_is_better=True)
    assert result.z == pytest.approx(-0.0005 / (analysis.RESOLUTION * 0.9))
    assert result.verdict == "tie" and result.ties == 5


def test_grid_best_picks_by_validation_per_seed():
    val = {"grid_0": np.array([0.1, 0.9]), "grid_1": np.array([0.5, 0.2]), "equal": np.ones(2)}
    test = {"grid_0": np.array([1.0, 2.0]), "grid_1": np.array([3.0, 4.0])}
    np.testing.assert_array_equal(analysis.grid_best(val, test, True), [3.0, 2.0])
    np.testing.assert_array_equal(analysis.grid_best(val, test, False), [1.0, 4.0])


def test_choice_is_worst_case_first_and_leave_one_out_excludes_the_task():
    z = {
        "a": {"steady": 0.5, "bold": 9.0},
        "b": {"steady": -1.0, "bold": 9.0},
        "c": {"steady": 0.0, "bold": -3.0},
    }
    assert analysis.choose(z, ["a", "b", "c"]) == "steady"  # worst -1 beats worst -3
    assert analysis.choose(z, ["a", "b"]) == "bold"
    assert analysis.leave_one_task_out(z) == {"a": "steady", "b": "steady", "c": "bold"}


def test_the_validation_candidates_mu_gradient_is_the_unrolled_validation_loss():
    """µ's gradient against a central difference of L_val(θ − α Σ λ_j(µ) ∇l_j(θ)) in µ."""
    target = jnp.array([1.0, -2.0])

    def losses_fn(w):
        return jnp.stack([jnp.sum((w - target) ** 2), jnp.sum(w**2), jnp.sum(w)])

    def val_loss(w, key):
        return jnp.sum((w - 0.5 * target) ** 2)

    values = {"eps": 1.0, "rho": 0.1, "mu_learning_rate": 0.05, "primary_floor": 0.0}
    config = {**{k: jnp.float32(v) for k, v in values.items()}, "loss_floor": jnp.float32(0.3)}
    weighting = validation_yoto(config, val_loss, 0.1)
    w0, mu = jnp.array([0.3, 0.2]), jnp.array([0.4, -0.7])
    result = weighting.step(losses_fn, w0, {yoto_jax.MU_KEY: mu}, ())

    def unrolled(mu):
        weights = yoto_jax.loss_weights(mu, loss_floor=0.3)
        w = w0.astype(mu.dtype)
        return val_loss(w - 0.1 * jax.grad(lambda w: weights @ losses_fn(w))(w), None)

    with jax.enable_x64(True):  # the central difference in float64
        mu64 = np.asarray(mu, np.float64)
        numeric = [
            (unrolled(jnp.asarray(mu64 + 1e-4 * e)) - unrolled(jnp.asarray(mu64 - 1e-4 * e))) / 2e-4
            for e in np.eye(2)
        ]
    np.testing.assert_allclose(result.grads[yoto_jax.MU_KEY], numeric, rtol=1e-4)
    # the model's gradient is the weighted sum's
    weights = yoto_jax.loss_weights(mu, loss_floor=0.3)
    expected = jax.grad(lambda w: weights @ losses_fn(w))(w0)
    np.testing.assert_allclose(result.model_grads, expected, rtol=1e-5)
