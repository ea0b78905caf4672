"""The task suite that chooses YOTO's defaults: small tasks whose auxiliaries' roles are known.

Every task is a small MLP trunk with one head per output, trained in seconds, with a
primary loss and auxiliaries of a known role:

* ``regulariser``: helps generalisation while its loss stays large (consistency under an
  augmentation, denoising, smoothness);
* ``helpful``: a second view of the primary's labels whose loss is larger (soft Dice);
* ``harmful``: noise labels, or a loss that fights the primary;
* ``redundant``: the primary again, through another head, in other units.

Data come from procedural generators and from scikit-learn's bundled data sets (digits,
diabetes, breast cancer): nothing is downloaded. Each task's data are fixed (data seed
0); the training seeds vary the initialisation and the batches.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Params = Any
Batch = dict[str, jax.Array]

HIDDEN = 64


class Splits(NamedTuple):
    train: Batch
    val: Batch
    test: Batch


class SuiteTask(NamedTuple):
    """One task of the suite. ``losses(params, batch, key) -> (T,)``, the primary first;
    ``metric(params, split) -> ()`` the score reported (validation selects, test reports)."""

    name: str
    description: str
    loss_names: tuple[str, ...]
    roles: tuple[str, ...]  # the auxiliaries' roles, one per auxiliary
    data: Splits
    init: Callable[[jax.Array], Params]
    losses: Callable[[Params, Batch, jax.Array], jax.Array]
    metric: Callable[[Params, Batch], jax.Array]
    metric_name: str
    higher_is_better: bool


# --- the model: an MLP trunk with linear heads ------------------------------------------


def _dense(key: jax.Array, fan_in: int, fan_out: int) -> dict[str, jax.Array]:
    weight = jax.random.normal(key, (fan_in, fan_out)) * jnp.sqrt(1.0 / fan_in)
    return {"w": weight, "b": jnp.zeros(fan_out)}


def mlp_init(inputs: int, heads: dict[str, int]) -> Callable[[jax.Array], Params]:
    """``key -> params`` of a two-layer ReLU trunk of width ``HIDDEN`` and linear heads."""

    def init(key: jax.Array) -> Params:
        keys = jax.random.split(key, 2 + len(heads))
        return {
            "trunk": [_dense(keys[0], inputs, HIDDEN), _dense(keys[1], HIDDEN, HIDDEN)],
            "heads": {
                name: _dense(k, HIDDEN, size)
                for k, (name, size) in zip(keys[2:], sorted(heads.items()))
            },
        }

    return init


def features(params: Params, x: jax.Array) -> jax.Array:
    for layer in params["trunk"]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x


def head(params: Params, name: str, z: jax.Array) -> jax.Array:
    layer = params["heads"][name]
    return z @ layer["w"] + layer["b"]


# --- losses and metrics -----------------------------------------------------------------


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))


def consistency(logits: jax.Array, other_logits: jax.Array) -> jax.Array:
    """KL(sg(p) || q) between the predictions on x and on its augmentation."""
    target = jax.nn.softmax(jax.lax.stop_gradient(logits))
    return jnp.mean(
        jnp.sum(target * (jnp.log(target + 1e-12) - jax.nn.log_softmax(other_logits)), axis=-1)
    )


def soft_dice(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """1 − the mean over classes of the batch's soft Dice coefficient."""
    probs = jax.nn.softmax(logits)
    onehot = jax.nn.one_hot(labels, logits.shape[-1])
    overlap = 2.0 * jnp.sum(probs * onehot, axis=0) + 1.0
    return 1.0 - jnp.mean(overlap / (jnp.sum(probs, axis=0) + jnp.sum(onehot, axis=0) + 1.0))


def mse(prediction: jax.Array, target: jax.Array) -> jax.Array:
    return jnp.mean((prediction - target) ** 2)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits, -1) == labels)


# --- data -------------------------------------------------------------------------------


def _split(arrays: dict[str, np.ndarray], sizes: tuple[int, int, int], seed: int = 0) -> Splits:
    """A random split of ``arrays`` into train, val and test of the given sizes."""
    total = len(next(iter(arrays.values())))
    order = np.random.default_rng(seed).permutation(total)
    bounds = np.cumsum((0, *sizes))
    if bounds[-1] > total:
        raise ValueError(f"split sizes {sizes} exceed the {total} examples.")
    parts = [
        {k: jnp.asarray(v[order[a:b]]) for k, v in arrays.items()}
        for a, b in itertools.pairwise(bounds)
    ]
    return Splits(*parts)


SIGNAL_LENGTH = 64
SIGNAL_CLASSES = 10


def signals(num: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Noisy, shifted 1-D signals of 10 classes (two sinusoids each) and their clean forms."""
    rng = np.random.default_rng(1000 + seed)
    template_rng = np.random.default_rng(7)
    frequencies = template_rng.uniform(1.0, 6.0, (SIGNAL_CLASSES, 2))
    phases = template_rng.uniform(0.0, 2 * np.pi, (SIGNAL_CLASSES, 2))
    t = np.arange(SIGNAL_LENGTH) / SIGNAL_LENGTH
    labels = rng.integers(0, SIGNAL_CLASSES, num)
    shift = rng.uniform(-0.1, 0.1, num)[:, None]
    amplitude = rng.uniform(0.7, 1.3, num)[:, None]
    f, p = frequencies[labels], phases[labels]
    clean = amplitude * (
        np.sin(2 * np.pi * f[:, :1] * (t + shift) + p[:, :1])
        + 0.6 * np.sin(2 * np.pi * f[:, 1:] * (t + shift) + p[:, 1:])
    )
    noisy = clean + rng.normal(0.0, 1.2, clean.shape)
    return {
        "x": noisy.astype(np.float32),
        "clean": clean.astype(np.float32),
        "y": labels.astype(np.int32),
    }


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int32)


def _standardised(x: np.ndarray) -> np.ndarray:
    return ((x - x.mean(0)) / (x.std(0) + 1e-8)).astype(np.float32)


def _noise_labels(num: int, classes: int) -> np.ndarray:
    return np.random.default_rng(99).integers(0, classes, num).astype(np.int32)


def _shift_image(x: jax.Array, key: jax.Array) -> jax.Array:
    """Each 8×8 image shifted by up to one pixel (zero fill), plus Gaussian noise."""
    images = x.reshape(-1, 8, 8)
    shift_key, noise_key = jax.random.split(key)
    shifts = jax.random.randint(shift_key, (2,), -1, 2)
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1)))
    moved = jax.lax.dynamic_slice(padded, (0, 1 + shifts[0], 1 + shifts[1]), images.shape)
    return moved.reshape(x.shape) + 0.1 * jax.random.normal(noise_key, x.shape)


def _roll_signal(x: jax.Array, key: jax.Array) -> jax.Array:
    return jnp.roll(x, jax.random.randint(key, (), -4, 5), axis=-1)


# --- the tasks --------------------------------------------------------------------------


def _classifier_metric(head_name: str = "class") -> Callable[[Params, Batch], jax.Array]:
    def metric(params: Params, split: Batch) -> jax.Array:
        return accuracy(head(params, head_name, features(params, split["x"])), split["y"])

    return metric


def _classification(name, description, loss_names, roles, data, init, losses) -> SuiteTask:
    """A task scored by the test accuracy of its ``class`` head (higher is better)."""
    metric = _classifier_metric()
    return SuiteTask(
        name, description, loss_names, roles, data, init, losses, metric, "accuracy", True
    )


def _regression_metric(params: Params, split: Batch) -> jax.Array:
    return mse(head(params, "value", features(params, split["x"]))[:, 0], split["y"])


def _regression(name, description, loss_names, roles, data, init, losses) -> SuiteTask:
    """A task scored by the test MSE of its ``value`` head (lower is better)."""
    return SuiteTask(
        name, description, loss_names, roles, data, init, losses, _regression_metric, "mse", False
    )


def signal_task(name: str, train: int, consistency_scale: float = 1.0) -> SuiteTask:
    """Signal classification with a denoising and a shift-consistency auxiliary."""
    data = _split(signals(train + 1000 + 2000), (train, 1000, 2000))

    def losses(params: Params, batch: Batch, key: jax.Array) -> jax.Array:
        z = features(params, batch["x"])
        logits = head(params, "class", z)
        shifted = head(params, "class", features(params, _roll_signal(batch["x"], key)))
        return jnp.stack(
            [
                cross_entropy(logits, batch["y"]),
                mse(head(params, "denoise", z), batch["clean"]),
                consistency_scale * consistency(logits, shifted),
            ]
        )

    units = "" if consistency_scale == 1.0 else f", consistency ×{consistency_scale:g}"
    return _classification(
        name,
        f"1-D signals, {train} training samples{units}",
        ("classification", "denoising", "consistency"),
        ("regulariser", "regulariser"),
        data,
        mlp_init(SIGNAL_LENGTH, {"class": SIGNAL_CLASSES, "denoise": SIGNAL_LENGTH}),
        losses,
    )


def digits_task(name: str, auxiliary: str, train: int = 300) -> SuiteTask:
    """scikit-learn's 8×8 digits with one auxiliary of a known role."""
    x, y = _digits()
    arrays = {"x": x, "y": y, "noise": _noise_labels(len(y), 10)}
    data = _split(arrays, (train, 400, 1000))
    heads = {"class": 10}
    if auxiliary in ("noise_labels", "redundant"):
        heads["second"] = 10

    def aux_loss(params: Params, batch: Batch, z: jax.Array, logits, key) -> jax.Array:
        if auxiliary == "invariance":
            other = head(params, "class", features(params, _shift_image(batch["x"], key)))
            return consistency(logits, other)
        if auxiliary == "dice":
            return soft_dice(logits, batch["y"])
        if auxiliary == "noise_labels":
            return cross_entropy(head(params, "second", z), batch["noise"])
        return 10.0 * cross_entropy(head(params, "second", z), batch["y"])  # redundant

    def losses(params: Params, batch: Batch, key: jax.Array) -> jax.Array:
        z = features(params, batch["x"])
        logits = head(params, "class", z)
        return jnp.stack(
            [cross_entropy(logits, batch["y"]), aux_loss(params, batch, z, logits, key)]
        )

    roles = {
        "invariance": ("regulariser", "shift-and-noise consistency"),
        "dice": ("helpful", "soft Dice of the same labels"),
        "noise_labels": ("harmful", "cross-entropy on random labels (second head)"),
        "redundant": ("redundant", "10 × the primary's cross-entropy on a second head"),
    }
    role, what = roles[auxiliary]
    return _classification(
        name,
        f"digits, {train} training samples; auxiliary: {what}",
        ("classification", auxiliary),
        (role,),
        data,
        mlp_init(64, heads),
        losses,
    )


def digits_five_task() -> SuiteTask:
    """Digits with T = 5: parity (helpful), reconstruction, invariance, noise labels."""
    x, y = _digits()
    arrays = {"x": x, "y": y, "noise": _noise_labels(len(y), 10)}
    data = _split(arrays, (300, 400, 1000), seed=1)

    def losses(params: Params, batch: Batch, key: jax.Array) -> jax.Array:
        z = features(params, batch["x"])
        logits = head(params, "class", z)
        other = head(params, "class", features(params, _shift_image(batch["x"], key)))
        return jnp.stack(
            [
                cross_entropy(logits, batch["y"]),
                cross_entropy(head(params, "parity", z), batch["y"] % 2),
                mse(head(params, "reconstruct", z), batch["x"]),
                consistency(logits, other),
                cross_entropy(head(params, "noise", z), batch["noise"]),
            ]
        )

    return _classification(
        "digits_five",
        "digits, 300 training samples, T = 5: parity, reconstruction, invariance, noise labels",
        ("classification", "parity", "reconstruction", "invariance", "noise_labels"),
        ("helpful", "regulariser", "regulariser", "harmful"),
        data,
        mlp_init(64, {"class": 10, "parity": 2, "reconstruct": 64, "noise": 10}),
        losses,
    )


def smooth_regression_task() -> SuiteTask:
    """A smooth function of 8 inputs from 150 noisy samples, with a smoothness penalty."""
    rng = np.random.default_rng(3)
    directions = rng.normal(size=(8, 3)) / np.sqrt(8)
    x = rng.normal(size=(2150, 8)).astype(np.float32)
    projected = x @ directions
    y = np.sin(2 * projected[:, 0]) + 0.5 * np.cos(3 * projected[:, 1]) + 0.3 * projected[:, 2]
    y_noisy = (y + rng.normal(0.0, 0.3, y.shape)).astype(np.float32)
    data = _split({"x": x, "y": y_noisy}, (150, 500, 1500))

    def losses(params: Params, batch: Batch, key: jax.Array) -> jax.Array:
        prediction = head(params, "value", features(params, batch["x"]))[:, 0]
        step = 0.1 * jax.random.normal(key, batch["x"].shape)
        moved = head(params, "value", features(params, batch["x"] + step))[:, 0]
        return jnp.stack([mse(prediction, batch["y"]), mse(moved, prediction) / 0.01])

    return _regression(
        "smooth_regression",
        "procedural 8-D regression, 150 training samples; auxiliary: smoothness penalty",
        ("regression", "smoothness"),
        ("regulariser",),
        data,
        mlp_init(8, {"value": 1}),
        losses,
    )


def diabetes_task() -> SuiteTask:
    """scikit-learn's diabetes regression, with denoising reconstruction of the inputs."""
    from sklearn.datasets import load_diabetes

    features_, target = load_diabetes(return_X_y=True)
    data = _split(
        {"x": _standardised(features_), "y": _standardised(target[:, None])[:, 0]},
        (150, 100, 192),
    )

    def losses(params: Params, batch: Batch, key: jax.Array) -> jax.Array:
        noisy = batch["x"] + 0.5 * jax.random.normal(key, batch["x"].shape)
        z = features(params, noisy)
        return jnp.stack(
            [
                mse(head(params, "value", features(params, batch["x"]))[:, 0], batch["y"]),
                mse(head(params, "reconstruct", z), batch["x"]),
            ]
        )

    return _regression(
        "diabetes_denoise",
        "diabetes (scikit-learn), 150 training samples; auxiliary: denoising reconstruction",
        ("regression", "denoising"),
        ("regulariser",),
        data,
        mlp_init(10, {"value": 1, "reconstruct": 10}),
        losses,
    )


def breast_cancer_task() -> SuiteTask:
    """scikit-learn's breast cancer data, with an auxiliary that fights the primary."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    data = _split({"x": _standardised(x), "y": y.astype(np.int32)}, (100, 150, 319))

    def losses(params: Params, batch: Batch, key: jax.Array) -> jax.Array:
        logits = head(params, "class", features(params, batch["x"]))
        return jnp.stack([cross_entropy(logits, batch["y"]), cross_entropy(logits, 1 - batch["y"])])

    return _classification(
        "breast_cancer_fight",
        "breast cancer (scikit-learn), 100 training samples; auxiliary: the flipped labels",
        ("classification", "flipped"),
        ("harmful",),
        data,
        mlp_init(30, {"class": 2}),
        losses,
    )


TASKS: dict[str, Callable[[], SuiteTask]] = {
    "signal_small": lambda: signal_task("signal_small", 400),
    "signal_large": lambda: signal_task("signal_large", 3000),
    "signal_x100": lambda: signal_task("signal_x100", 400, consistency_scale=100.0),
    "signal_x0.01": lambda: signal_task("signal_x0.01", 400, consistency_scale=0.01),
    "digits_invariance": lambda: digits_task("digits_invariance", "invariance"),
    "digits_dice": lambda: digits_task("digits_dice", "dice"),
    "digits_noise_labels": lambda: digits_task("digits_noise_labels", "noise_labels"),
    "digits_redundant": lambda: digits_task("digits_redundant", "redundant"),
    "digits_five": digits_five_task,
    "smooth_regression": smooth_regression_task,
    "diabetes_denoise": diabetes_task,
    "breast_cancer_fight": breast_cancer_task,
}
"""Every task of the suite, built on demand (each builds its data)."""
