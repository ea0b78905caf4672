"""Flax NNX integration: any weighting's learnable params inside the model, one optimizer.

:class:`LossWeights` holds a :class:`~yoto_jax.Weighting`'s params (YOTO's µ,
uncertainty weighting's log-variances, GradNorm's logits) as ``nnx.Param`` variables
of the model, and its state as a variable; :func:`train_step` is
:func:`yoto_jax.trainer`'s step for an NNX model and ``nnx.Optimizer``. Swapping
methods is one line: the ``weighting=`` argument.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.typing import ArrayLike

from yoto_jax.by_name import ByName
from yoto_jax.composite import (
    DEFAULT_EPS,
    DEFAULT_LOSS_FLOOR,
    DEFAULT_PRIMARY_FLOOR,
    named_composite,
    resolve_floor,
)
from yoto_jax.diagnostics import (
    NamedReport,
    WeightReport,
    build_report,
    check_loss_names,
    ordered_losses,
    report_names,
)
from yoto_jax.representation import RepresentationLosses
from yoto_jax.selection import MU_KEY
from yoto_jax.weighting import Weighting
from yoto_jax.yoto_weighting import yoto


class WeightingParam(nnx.Param):
    """An ``nnx.Param`` holding a weighting's learnable array, so filters can tell it from
    the model's weights. ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` includes it."""


class YotoMu(WeightingParam):
    """YOTO's logits µ; ``nnx.state(model, YotoMu)`` selects them alone."""


class WeightingState(nnx.Variable):
    """A weighting's state (loss statistics, FAMO's logits, ...): not trained."""


class LossWeights(nnx.Module):
    """A loss weighting for one multi-loss objective, kept inside an NNX model.

    By default YOTO (:func:`yoto_jax.yoto` with ``eps`` and ``primary_floor``); any
    :class:`~yoto_jax.Weighting` with ``weighting=``. Train the model with
    ``nnx.Optimizer(model, model.loss_weights.optimizer(tx), wrt=nnx.Param)`` and
    :func:`train_step`. Names follow one order everywhere: ``(primary, *auxiliary)``.

    Example:
      >>> from flax import nnx
      >>> import optax, yoto_jax
      >>> from yoto_jax.nnx import LossWeights
      >>> weights = LossWeights("depth", ["segmentation", "consistency"], eps=0.1)
      >>> loss = weights({"depth": 1.0, "segmentation": 0.7, "consistency": 0.2})
      >>> optimizer = nnx.Optimizer(weights, weights.optimizer(optax.adam(1e-3)), wrt=nnx.Param)
      >>> dwa = LossWeights("depth", ["segmentation"], weighting=yoto_jax.baselines.dwa(10))
      >>> dwa.weights()
      {'depth': Array(1., dtype=float32), 'segmentation': Array(1., dtype=float32)}

    A model can hold several ``LossWeights`` (several independent objectives).
    """

    def __init__(
        self,
        primary: str,
        auxiliary: Sequence[str],
        *,
        weighting: Weighting | None = None,
        eps: float = DEFAULT_EPS,
        primary_floor: float | str = DEFAULT_PRIMARY_FLOOR,
        loss_floor: float = DEFAULT_LOSS_FLOOR,
    ):
        """Creates the weighting's params and state for ``(primary, *auxiliary)``.

        Args:
          primary: the name of the primary loss.
          auxiliary: the names of the K >= 1 auxiliary losses.
          weighting: the method; None is YOTO with ``eps`` and ``primary_floor``.
          eps: YOTO's initial weight of each auxiliary relative to the primary.
          primary_floor: YOTO's least weight of the primary loss, m in [0, 1) (0, the
            default and the paper's formulation), or ``"uniform"`` (1/(K+1)).
          loss_floor: YOTO's least weight of every loss, as a fraction m in [0, 1] of
            uniform (0.8 by default; 0 is the paper's formulation).
        """
        names = check_loss_names(primary, auxiliary)
        self.primary = primary
        self.auxiliary = tuple(auxiliary)
        self.is_yoto = weighting is None
        self.primary_floor = resolve_floor(primary_floor, len(self.auxiliary))
        self.loss_floor = loss_floor
        if weighting is None:
            weighting = yoto(eps, primary_floor=primary_floor, loss_floor=loss_floor)
        self.weighting = weighting
        params, state = self.weighting.init(len(names))
        for name, value in params.items():
            setattr(self, name, (YotoMu if name == MU_KEY else WeightingParam)(value))
        self.param_names = tuple(params)
        self.state = WeightingState(state)

    @property
    def names(self) -> tuple[str, ...]:
        """Loss names in the order of every vector here, ``(primary, *auxiliary)``."""
        return (self.primary, *self.auxiliary)

    @property
    def params(self) -> dict[str, jax.Array]:
        """The weighting's learnable arrays, by name."""
        return {name: getattr(self, name)[...] for name in self.param_names}

    @property
    def mu(self) -> jax.Array:
        """YOTO's logits, shape (K,), in the order of ``auxiliary``."""
        return getattr(self, MU_KEY)[...]

    def optimizer(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
        """The optimizer for a model holding these weights: ``weighting.optimizer(tx)``
        (for YOTO, µ's regulariser and µ's own Adam; otherwise ``tx``)."""
        return self.weighting.optimizer(tx)

    def __call__(self, losses: Mapping[str, ArrayLike]) -> jax.Array:
        """YOTO's composite loss Σ λ_i l_i of a dict of scalar losses (YOTO only: any
        weighting trains with :func:`train_step`)."""
        if not self.is_yoto:
            raise TypeError(
                "calling LossWeights on the losses gives YOTO's composite loss; for any other "
                "weighting use yoto_jax.nnx.train_step(model, optimizer, loss_weights, losses_fn)."
            )
        return named_composite(
            self.mu,
            losses,
            self.primary,
            self.auxiliary,
            primary_floor=self.primary_floor,
            loss_floor=self.loss_floor,
        )

    def vector(self, losses: Mapping[str, ArrayLike]) -> jax.Array:
        """A dict of scalar losses as the (T,) vector in the order of ``names``."""
        return ordered_losses(losses, self.primary, self.auxiliary)

    def named(self, vector: jax.Array) -> ByName:
        """A (T,) vector as a dict in the order of ``names`` (kept through ``jax.jit``)."""
        return ByName(zip(self.names, vector))

    def weights(self) -> ByName:
        """The current weights by loss name, for logging (the weighting's convention,
        see :mod:`yoto_jax.weighting`)."""
        return self.named(self.weighting.weights(self.params, self.state.get_value()))

    def report(
        self,
        losses: Mapping[str, ArrayLike],
        previous: WeightReport | None = None,
        **options: Any,
    ) -> WeightReport:
        """:func:`yoto_jax.weight_report` of YOTO's current µ and a dict of losses, for
        logging; its arrays follow the order of ``names`` (:meth:`report_names` names them).

        ``weights`` are those of the current µ, with the weighting's floors: called after
        :func:`train_step`, the weights of the next step (``train_step`` returns those it
        applied). Pass the previous report as ``previous`` to count the steps an
        auxiliary stays switched off; ``options`` are ``weight_report``'s keyword
        arguments (``primary_threshold``, ``off_fraction``, ``sustain``).

        Example:
          >>> weights = LossWeights("depth", ["segmentation", "consistency"])
          >>> report = weights.report({"depth": 1.0, "segmentation": 0.7, "consistency": 0.2})
          >>> weights.report_names(report).switched_off, bool(report.collapsed)
          ((), False)
        """
        if MU_KEY not in self.param_names:
            raise TypeError(
                "report reads YOTO's logits µ; this LossWeights's weighting has the params "
                f"{list(self.param_names)}: log weights() instead."
            )
        return build_report(
            self.mu,
            self.vector(losses),
            self.weighting.weights(self.params, self.state.get_value()),
            previous=previous,
            **options,
        )

    def report_names(self, report: WeightReport) -> NamedReport:
        """:func:`yoto_jax.report_names` with these names: a report's flags and indices as
        loss names, on the host (after the jitted step)."""
        return report_names(report, self.names)


def _path_of(model: nnx.Module, module: nnx.Module) -> tuple:
    for path, node in nnx.iter_graph(model):
        if node is module:
            return tuple(path)
    raise ValueError("loss_weights must be a submodule of model (an attribute of it).")


def train_step(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    loss_weights: LossWeights,
    losses_fn: Callable[[nnx.Module], Mapping[str, jax.Array]],
    *,
    key: jax.Array | None = None,
) -> tuple[ByName, ByName]:
    """One training step of ``model`` with the weighting of its ``loss_weights``.

    The NNX form of :func:`yoto_jax.trainer`'s step: the weighting's gradients for the
    model's ``nnx.Param`` variables and for its own params, one ``optimizer.update``,
    then the weighting's ``after_update``. Call it inside ``nnx.jit``.

    ``losses_fn(model)`` returns the dict of scalar losses on this step's batch. The
    weighting may evaluate it several times (FAMO after the step, gradient methods
    once per loss) on functional copies of the model, so changes it makes to the
    model's non-parameter state (batch statistics, ``nnx.Rngs`` counts) are not kept:
    give it its randomness from ``key`` or the batch.

    A gradient method's ``shared`` mask meets ``nnx.State`` trees here, not a dict: the
    model's ``nnx.Param`` variables without the weighting's (GradNorm), or the
    optimizer's updates of all of them (MGDA, PCGrad, CAGrad, ...); build it with
    :func:`shared_params` from an NNX filter, a path predicate or module names.

    Args:
      model: the model; ``loss_weights`` must be one of its submodules.
      optimizer: ``nnx.Optimizer(model, loss_weights.optimizer(tx), wrt=nnx.Param)``.
      loss_weights: the :class:`LossWeights` of this objective.
      losses_fn: ``model -> {name: scalar loss}``, exactly the names of ``loss_weights``
        (a missing or unweighted name raises a ``KeyError``); or, for representation
        mode, :func:`yoto_jax.representation_losses` of ``model -> z`` and
        ``(model, z) -> {name: scalar loss}``.
      key: this step's PRNG key, for random methods (RLW, PCGrad).

    Returns:
      The losses before the step and the weights applied, as dicts in the order of
      ``loss_weights.names``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from flax import nnx
      >>> from yoto_jax import baselines
      >>> from yoto_jax.nnx import LossWeights, train_step
      >>> class Model(nnx.Module):
      ...     def __init__(self, weighting=None):
      ...         self.net = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
      ...         self.loss_weights = LossWeights("a", ["b"], weighting=weighting)
      ...     def losses(self, x):
      ...         out = self.net(x)
      ...         return {"a": jnp.mean(out[:, 0] ** 2), "b": jnp.mean((out[:, 1] - 1) ** 2)}
      >>> model = Model(weighting=baselines.uncertainty())  # or Model() for YOTO
      >>> optimizer = nnx.Optimizer(
      ...     model, model.loss_weights.optimizer(optax.adam(1e-2)), wrt=nnx.Param
      ... )
      >>> @nnx.jit
      ... def step(model, optimizer, x):
      ...     return train_step(model, optimizer, model.loss_weights, lambda m: m.losses(x))
      >>> losses, weights = step(model, optimizer, jnp.ones((4, 3)))
      >>> list(weights)
      ['a', 'b']
    """
    weighting = loss_weights.weighting
    prefix = _path_of(model, loss_weights)
    graphdef, own_params, model_params, rest = nnx.split(model, WeightingParam, nnx.Param, ...)

    def model_of(params: nnx.State) -> nnx.Module:
        return nnx.merge(graphdef, own_params, params, rest)

    losses_vector = (
        losses_fn.on_model(model_of, loss_weights.vector)
        if isinstance(losses_fn, RepresentationLosses)
        else lambda params: loss_weights.vector(losses_fn(model_of(params)))
    )

    token = _MODEL_OF.set(model_of)
    try:
        result = weighting.step(
            losses_vector,
            model_params,
            loss_weights.params,
            loss_weights.state.get_value(),
            key=key,
        )
        own_grads = nnx.from_flat_state(
            [
                (path, variable.replace(_own_grad(path, prefix, result.grads, variable)))
                for path, variable in nnx.to_flat_state(own_params)
            ]
        )
        optimizer.update(model, nnx.merge_state(result.model_grads, own_grads))
        _, _, new_params, _ = nnx.split(model, WeightingParam, nnx.Param, ...)
        loss_weights.state.set_value(weighting.after_update(losses_vector, new_params, result))
    finally:
        _MODEL_OF.reset(token)
    return loss_weights.named(result.losses), loss_weights.named(result.weights)


_MODEL_OF = contextvars.ContextVar("yoto_jax_nnx_model_of", default=None)
"""Inside :func:`train_step`: the model's params (an ``nnx.State``) -> the model."""


def module_fn(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """A function of the NNX model as the function of its params that a weighting takes.

    Auto-λ's ``val_loss_fn`` (:func:`yoto_jax.baselines.auto_lambda`) takes the model's
    params, an ``nnx.State`` under NNX, and the weighting is built before the model.
    Called inside :func:`train_step`, the function returned merges the params into the
    model being trained and calls ``fn(model, *args)``.

    Args:
      fn: ``(model, *args) -> value``, e.g. the validation loss ``model -> scalar``, or
        ``(model, key) -> scalar`` with Auto-λ's ``val_takes_key=True``.

    Returns:
      ``(params, *args) -> fn(model with params, *args)``, with ``fn``'s signature; it
      raises a ``RuntimeError`` when called outside :func:`train_step`.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from flax import nnx
      >>> from yoto_jax import baselines
      >>> from yoto_jax.nnx import LossWeights, module_fn, train_step
      >>> class Model(nnx.Module):
      ...     def __init__(self):
      ...         self.w = nnx.Param(jnp.float32(0.0))
      ...         val_loss = module_fn(lambda model: (model.w[...] - 1.0) ** 2)
      ...         method = baselines.auto_lambda(val_loss, learning_rate=0.1)
      ...         self.loss_weights = LossWeights("a", ["b"], weighting=method)
      >>> model = Model()
      >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
      >>> losses = lambda m: {"a": (m.w[...] - 1.0) ** 2, "b": (m.w[...] + 1.0) ** 2}
      >>> _, weights = train_step(model, optimizer, model.loss_weights, losses)
      >>> bool(weights["a"] > weights["b"])  # the validation loss favours the primary
      True
    """
    if not callable(fn):
        raise TypeError(f"module_fn takes a function of the model, got {type(fn).__name__}.")

    @functools.wraps(fn)
    def on_params(params: nnx.State, *args: Any) -> jax.Array:
        model_of = _MODEL_OF.get()
        if model_of is None:
            name = getattr(fn, "__name__", "fn")
            raise RuntimeError(
                f"module_fn({name}) is called by train_step, not outside train_step."
            )
        return fn(model_of(params), *args)

    return on_params


def _own_grad(path: tuple, prefix: tuple, grads: dict[str, jax.Array], variable: Any):
    """The weighting's gradient for one of the model's WeightingParam variables: from
    ``grads`` for ``loss_weights``' own, zero for those of other LossWeights."""
    if tuple(path[:-1]) == prefix and path[-1] in grads:
        return grads[path[-1]]
    return jnp.zeros_like(variable.get_value())


def shared_params(
    selection: nnx.filterlib.Filter | Mapping[str, Any],
) -> Callable[[nnx.State], nnx.State]:
    """The ``shared=`` of a gradient method (MGDA, PCGrad, GradNorm, ...) for an NNX model.

    Under :func:`train_step` a method's ``shared`` is applied to an ``nnx.State``: the
    model's ``nnx.Param`` variables (GradNorm) or the optimizer's updates of them (the
    methods that act inside the optimizer, MGDA, PCGrad, CAGrad, ..., whose updates
    include the :class:`LossWeights`' params), which a plain bool tree such as
    ``{"trunk": True}`` does not match; this builds the mask from the variables' paths.

    Args:
      selection: an NNX filter (``nnx.PathContains("trunk")``, a variable type, a
        predicate ``(path, variable) -> bool``, ...) or a mapping of module names to
        bools, nested as the model's attributes are: ``{"trunk": True, "heads": False}``
        (a bool selects everything below it). A :class:`LossWeights`' own params are
        never selected.

    Returns:
      ``state -> mask``, a bool for each variable of ``state`` (True: shared), to pass
      as the method's ``shared``.

    Example:
      >>> from flax import nnx
      >>> from yoto_jax import baselines
      >>> from yoto_jax.nnx import shared_params
      >>> method = baselines.mgda(shared=shared_params({"trunk": True, "heads": False}))
      >>> model = nnx.Dict(trunk=nnx.Linear(2, 2, rngs=nnx.Rngs(0)),
      ...                  heads=nnx.Linear(2, 1, rngs=nnx.Rngs(0)))
      >>> mask = shared_params(nnx.PathContains("trunk"))(nnx.state(model, nnx.Param))
      >>> mask["trunk"]["kernel"].get_value(), mask["heads"]["bias"].get_value()
      (True, False)
    """
    if isinstance(selection, Mapping):
        predicate = functools.partial(_in_prefix, selection)
    else:
        predicate = nnx.filterlib.to_predicate(selection)

    def selects(path: tuple, variable: nnx.Variable) -> bool:
        return not isinstance(variable, WeightingParam) and bool(predicate(path, variable))

    def mask(state: nnx.State) -> nnx.State:
        if not isinstance(state, nnx.State):
            raise TypeError(
                "shared_params selects variables of an nnx.State (under yoto_jax.nnx.train_step), "
                f"got {type(state).__name__}: for a plain pytree of params pass a bool tree."
            )
        flat = nnx.to_flat_state(state)
        return nnx.from_flat_state([(p, v.replace(selects(p, v))) for p, v in flat])

    return mask


def _in_prefix(prefix: Mapping[str, Any], path: tuple, variable: Any) -> bool:
    """The bool that the nested mapping ``prefix`` gives the variable at ``path``."""
    node = prefix
    for name in path:
        if isinstance(node, bool) or not isinstance(node, Mapping) or name not in node:
            break
        node = node[name]
    if isinstance(node, bool):
        return node
    found = sorted(map(str, node)) if isinstance(node, Mapping) else repr(node)
    raise ValueError(
        f"shared_params: the prefix gives no bool for the parameter {'/'.join(map(str, path))!r} "
        f"(where it ends, it holds {found}): give one bool per module, nested as the model's "
        "attributes, e.g. {'trunk': True, 'heads': False}."
    )
