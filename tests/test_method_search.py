"""search_methods: successive halving across families, against a NumPy float64 reference.

Three toy families with different state structures fit a point in R^2 whose validation
target is known. The reference trains every member eagerly in NumPy (float64), with the
same keys (``member_keys(family_key(key, name), i, R)``, turned into numbers by the same
bit mixing, written again in NumPy), and applies the halving rule in a Python loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yoto_jax import member_keys, search_methods
from yoto_jax.method_search import family_key

KEY = jax.random.key(3)
TARGET = np.array([1.0, -0.5])  # the validation target
TRAIN_TARGET = np.array([0.8, -0.2])  # what the gradient methods' training pulls towards
TOTAL_STEPS, ETA = 12, 3


def key_numbers(key: jax.Array) -> jax.Array:
    """Two numbers in [-1/2, 1/2) from the key's bits (a cheap stand-in for uniform)."""
    bits = jax.random.key_data(key)
    mixed = bits[0] * jnp.arange(1, 3, dtype=jnp.uint32) ^ bits[1]
    return (mixed >> 8).astype(jnp.float32) / 2**24 - 0.5


def key_numbers_np(key: jax.Array) -> np.ndarray:
    bits = np.asarray(jax.random.key_data(key), np.uint32)
    mixed = (bits[0] * np.arange(1, 3, dtype=np.uint32)) ^ bits[1]
    return (mixed >> 8).astype(np.float64) / 2**24 - 0.5


def score(theta: Any) -> Any:
    return -((theta[0] - TARGET[0]) ** 2) - (theta[1] - TARGET[1]) ** 2


# --- the families: init, train (num_steps steps), eval ----------------------------------


def sgd_init(config: dict, key: jax.Array) -> dict:
    return {"theta": 0.1 * key_numbers(key), "count": jnp.zeros((), jnp.int32)}


def sgd_train(state: dict, config: dict, key: jax.Array, num_steps: int) -> dict:
    pull = jnp.asarray(TRAIN_TARGET, jnp.float32) + 0.2 * key_numbers(key)

    def step(theta, _):
        return theta - config["lr"] * (theta - pull), None

    theta = jax.lax.scan(step, state["theta"], None, length=num_steps)[0]
    return {"theta": theta, "count": state["count"] + num_steps}


def momentum_init(config: dict, key: jax.Array) -> tuple:
    return 0.1 * key_numbers(key), jnp.zeros(2)


def momentum_train(state: tuple, config: dict, key: jax.Array, num_steps: int) -> tuple:
    pull = jnp.asarray(TRAIN_TARGET, jnp.float32) + 0.2 * key_numbers(key)

    def step(carry, _):
        theta, velocity = carry
        velocity = config["beta"] * velocity - 0.1 * (theta - pull)
        return (theta + velocity, velocity), None

    return jax.lax.scan(step, state, None, length=num_steps)[0]


def mix_init(weight: jax.Array, key: jax.Array) -> jax.Array:
    return jnp.zeros(2)


def mix_train(theta: jax.Array, weight: jax.Array, key: jax.Array, num_steps: int) -> jax.Array:
    goal = weight * jnp.asarray(TARGET, jnp.float32) + (1 - weight) * jnp.asarray(TRAIN_TARGET)

    def step(theta, _):
        return theta + 0.5 * (goal - theta), None

    return jax.lax.scan(step, theta, None, length=num_steps)[0]


FAMILIES = {
    "sgd": (
        sgd_init,
        sgd_train,
        lambda s, c: score(s["theta"]),
        {"lr": jnp.array([0.02, 0.3, 0.6])},
    ),
    "momentum": (
        momentum_init,
        momentum_train,
        lambda s, c: score(s[0]),
        {"beta": jnp.array([0.0, 0.5, 0.8, 0.95])},
    ),
    "mix": (mix_init, mix_train, lambda s, c: score(s), jnp.array([0.0, 0.6])),
}


# --- the reference: eager NumPy float64 training and the halving rule ---------------------


def reference_train(name: str, state: Any, config: Any, key: jax.Array, num_steps: int) -> Any:
    if name == "sgd":
        theta, pull = state["theta"].copy(), TRAIN_TARGET + 0.2 * key_numbers_np(key)
        for _ in range(num_steps):
            theta = theta - float(config["lr"]) * (theta - pull)
        return {"theta": theta, "count": state["count"] + num_steps}
    if name == "momentum":
        (theta, velocity), pull = state, TRAIN_TARGET + 0.2 * key_numbers_np(key)
        for _ in range(num_steps):
            velocity = float(config["beta"]) * velocity - 0.1 * (theta - pull)
            theta = theta + velocity
        return theta, velocity
    goal = float(config) * TARGET + (1 - float(config)) * TRAIN_TARGET
    for _ in range(num_steps):
        state = state + 0.5 * (goal - state)
    return state


def reference_init(name: str, key: jax.Array) -> Any:
    theta = 0.1 * key_numbers_np(key)
    if name == "sgd":
        return {"theta": theta, "count": 0}
    if name == "momentum":
        return theta, np.zeros(2)
    return np.zeros(2)


def theta_of(name: str, state: Any) -> np.ndarray:
    return {"sgd": lambda s: s["theta"], "momentum": lambda s: s[0], "mix": lambda s: s}[name](
        state
    )


def reference_search(
    families: dict, total_steps: int, eta: int, rung_steps: list[int] | None = None
) -> dict:
    """Successive halving as a Python loop over eagerly trained members."""
    members = [
        (name, i, jax.tree.map(lambda leaf, i=i: np.asarray(leaf[i]), configs))
        for name, (*_, configs) in families.items()
        for i in range(jax.tree.leaves(configs)[0].shape[0])
    ]
    sizes = [len(members)]
    while sizes[-1] > 1:
        sizes.append(max(1, sizes[-1] // eta))
    steps = [total_steps // len(sizes)] * len(sizes)
    for r in range(total_steps % len(sizes)):
        steps[-1 - r] += 1
    steps = steps if rung_steps is None else rung_steps
    keys = {(name, i): member_keys(family_key(KEY, name), i, len(sizes)) for name, i, _ in members}
    states = {(name, i): reference_init(name, keys[name, i][0]) for name, i, _ in members}
    alive, history = members, []
    for r, num_steps in enumerate(steps):
        scored = []
        for name, i, config in alive:
            states[name, i] = reference_train(
                name, states[name, i], config, keys[name, i][1][r], num_steps
            )
            scored.append((-score(theta_of(name, states[name, i])), list(families).index(name), i))
        order = sorted(range(len(alive)), key=lambda j: scored[j])
        history.append([(alive[j][0], alive[j][1], -scored[j][0]) for j in order])
        alive = [alive[j] for j in order[: sizes[r + 1] if r + 1 < len(sizes) else 1]]
    winner = alive[0]
    return {
        "winner": winner[:2],
        "state": states[winner[:2]],
        "member_steps": sum(len(h) * s for h, s in zip(history, steps, strict=True)),
        "history": history,
        "steps": steps,
    }


@pytest.fixture(scope="module")
def result():
    return search_methods(FAMILIES, KEY, total_steps=TOTAL_STEPS, eta=ETA)


def test_the_search_matches_the_numpy_reference(result):
    want = reference_search(FAMILIES, TOTAL_STEPS, ETA)
    # 9 members -> 3 -> 1, three rungs of 4 steps
    assert [len(rung) for rung in want["history"]] == [9, 3, 1]
    assert (result.best_family, result.best_index) == want["winner"]
    assert result.member_steps == want["member_steps"] == (9 + 3 + 1) * 4
    assert [rung.num_steps for rung in result.history] == want["steps"]
    for rung, expected in zip(result.history, want["history"], strict=True):
        assert list(zip(rung.families, rung.indices.tolist(), strict=True)) == [
            (name, i) for name, i, _ in expected
        ]
        np.testing.assert_allclose(rung.scores, [s for *_, s in expected], rtol=1e-5, atol=1e-6)
    name, index = want["winner"]
    np.testing.assert_allclose(
        theta_of(name, result.best_state), theta_of(name, want["state"]), rtol=1e-5, atol=1e-6
    )
    config = FAMILIES[name][3]
    want_config = jax.tree.map(lambda leaf: np.asarray(leaf[index]), config)
    jax.tree.map(np.testing.assert_array_equal, result.best_config, want_config)
    # The first rung ranks members of all three families together.
    assert set(result.history[0].families) == set(FAMILIES)


def test_uneven_rungs_follow_rung_steps():
    rung_steps = [2, 3, 7]
    got = search_methods(FAMILIES, KEY, total_steps=TOTAL_STEPS, eta=ETA, rung_steps=rung_steps)
    want = reference_search(FAMILIES, TOTAL_STEPS, ETA, rung_steps)
    assert [rung.num_steps for rung in got.history] == rung_steps
    assert got.member_steps == want["member_steps"] == 9 * 2 + 3 * 3 + 7
    assert (got.best_family, got.best_index) == want["winner"]
    for rung, expected in zip(got.history, want["history"], strict=True):
        assert list(zip(rung.families, rung.indices.tolist(), strict=True)) == [
            (name, i) for name, i, _ in expected
        ]
        np.testing.assert_allclose(rung.scores, [s for *_, s in expected], rtol=1e-5, atol=1e-6)


def test_a_members_keys_depend_on_its_family_index_and_rung_only(result):
    # 4 members -> 1: two rungs, the first of 4 steps as among all three families
    alone = search_methods({"momentum": FAMILIES["momentum"]}, KEY, total_steps=8, eta=ETA)
    # rung 0 of momentum alone: the same members' scores as among all three families
    together = {
        i: s for name, i, s in zip(*(result.history[0][:3]), strict=True) if name == "momentum"
    }
    first = alone.history[0]
    np.testing.assert_allclose(first.scores, [together[i] for i in first.indices], rtol=1e-6)
    # The winner trained alone with its family's keys is best_state.
    name, index = result.best_family, result.best_index
    init_fn, train_fn, _, configs = FAMILIES[name]
    config = jax.tree.map(lambda leaf: leaf[index], configs)
    init_key, rung_keys = member_keys(family_key(KEY, name), index, len(result.history))
    state = init_fn(config, init_key)
    for r, rung in enumerate(result.history):
        state = train_fn(state, config, rung_keys[r], rung.num_steps)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        state,
        result.best_state,
    )


def test_nan_ranks_last_and_maximize_false_flips_the_order():
    def nan_eval(theta, weight):
        return jnp.where(weight > 0.5, jnp.nan, score(theta))

    families = {
        "mix": (mix_init, mix_train, nan_eval, jnp.array([0.0, 0.6, 1.0])),
        "sgd": FAMILIES["sgd"][:2] + (lambda s, c: score(s["theta"]), FAMILIES["sgd"][3]),
    }
    got = search_methods(families, KEY, total_steps=4, eta=2)
    first = got.history[0]
    assert list(zip(first.families, first.indices.tolist()))[-2:] == [("mix", 1), ("mix", 2)]
    assert np.isnan(first.scores[-2:]).all() and not np.isnan(first.scores[:-2]).any()
    losses = {
        name: (i, t, lambda s, c, e=e: -e(s, c), cf) for name, (i, t, e, cf) in families.items()
    }
    flipped = search_methods(losses, KEY, total_steps=4, eta=2, maximize=False)
    assert flipped.history[0].families == first.families
    np.testing.assert_array_equal(flipped.history[0].indices, first.indices)


def assert_results_equal(got: Any, want: Any) -> None:
    assert (got.best_family, got.best_index, got.member_steps) == (
        want.best_family,
        want.best_index,
        want.member_steps,
    )
    for a, b in zip(got.history, want.history, strict=True):
        assert a.families == b.families and a.num_steps == b.num_steps
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.scores, b.scores)
    jax.tree.map(np.testing.assert_array_equal, got.best_state, want.best_state)


def test_an_interrupted_search_resumes_to_the_same_result(result, tmp_path: Path):
    kwargs = {"total_steps": TOTAL_STEPS, "eta": ETA, "checkpoint_dir": tmp_path}
    stopped = search_methods(FAMILIES, KEY, stop_after_rung=1, **kwargs)
    assert len(stopped.history) == 1
    resumed = search_methods(FAMILIES, KEY, **kwargs)
    assert_results_equal(resumed, result)
    assert_results_equal(search_methods(FAMILIES, KEY, **kwargs), result)  # finished: read back
    # Another family set on the same directory is refused, naming what differs.
    fewer = {name: FAMILIES[name] for name in ("sgd", "mix")}
    with pytest.raises(ValueError, match=r"(?s)holds another search.*families: saved"):
        search_methods(fewer, KEY, total_steps=TOTAL_STEPS, eta=ETA, checkpoint_dir=tmp_path)


def changes_the_state(state, config, key, num_steps):
    return {"theta": state["theta"], "count": state["count"].astype(jnp.float32)}


def ignores_num_steps(state, config, key, num_steps):
    return sgd_train(state, config, key, 1)


def vector_score(state, config):
    return state["theta"]


SGD = FAMILIES["sgd"]


@pytest.mark.parametrize(
    "families, kwargs, error, match",
    [
        ({}, {}, ValueError, "families is empty"),
        ([SGD], {}, TypeError, "families must map a name"),
        ({"sgd": SGD[:3]}, {}, TypeError, r"family 'sgd' must be a tuple .* tuple of 3"),
        ({1: SGD}, {}, TypeError, "family names must be strings"),
        (
            {"sgd": SGD, "none": (*SGD[:3], {"lr": jnp.zeros(0)})},
            {},
            ValueError,
            r"family 'none': .*at least 1 member",
        ),
        (
            {"sgd": (SGD[0], None, *SGD[2:])},
            {},
            TypeError,
            "family 'sgd': train_fn must be a function",
        ),
        (
            {"sgd": (SGD[0], changes_the_state, *SGD[2:])},
            {},
            ValueError,
            r"family 'sgd': train_fn's state must keep .*\['count'\] it returned float32",
        ),
        (
            {"sgd": (*SGD[:2], vector_score, SGD[3])},
            {},
            ValueError,
            "family 'sgd': eval_fn must return one scalar score per member, got shape",
        ),
        (
            {"sgd": (SGD[0], ignores_num_steps, *SGD[2:])},
            {},
            ValueError,
            (
                r"family 'sgd': train_fn was asked for num_steps=6 steps, but member 0's step "
                r"counters advanced \['count'\] by 1"
            ),
        ),
        (FAMILIES, {"eta": 1}, ValueError, "eta"),
        (
            FAMILIES,
            {"total_steps": 2},
            ValueError,
            "total_steps too small for the rungs: 9 members",
        ),
        (FAMILIES, {"total_steps": 0}, ValueError, "total_steps"),
        (FAMILIES, {"rung_steps": [6, 6]}, ValueError, "one entry per rung: 9 members"),
        (FAMILIES, {"rung_steps": [4, 4, 5]}, ValueError, r"must sum to total_steps=12"),
        (FAMILIES, {"maximize": "yes"}, TypeError, "maximize"),
        (FAMILIES, {"key": 0}, TypeError, "key must hold PRNG keys"),
        (FAMILIES, {"stop_after_rung": 1}, ValueError, "needs checkpoint_dir"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(families, kwargs, error, match):
    kwargs = {"key": KEY, "total_steps": TOTAL_STEPS, **kwargs}
    with pytest.raises(error, match=match):
        search_methods(families, kwargs.pop("key"), **kwargs)
