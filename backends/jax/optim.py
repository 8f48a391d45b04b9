"""Optimizers from the neutral description; PyTorch's conventions are the reference.

torch.optim.SGD: g += wd * p; v = mu * v + g; p -= lr * v (nesterov:
p -= lr * (g + mu * v)). optax.trace computes exactly this buffer (its
first step gives v = g, as torch's does), so add_decayed_weights followed by
optax.sgd is torch's coupled L2 SGD.

torch.optim.Adam: g += wd * p; m = b1 * m + (1 - b1) g; v = b2 * v + (1 - b2) g^2;
p -= lr * m_hat / (sqrt(v_hat) + eps). optax.adam with eps_root=0 is the same
formula (eps outside the square root), so add_decayed_weights followed by
optax.adam is torch's Adam with L2 (not AdamW).

config["decay"] (absent: "all") says which parameters the L2 term covers:
"all" of them, or only the "kernels" (neutral names ending in ".kernel":
conv and dense kernels, FitNet's "hint0.kernel"; not biases nor batch norm's
scale and shift): optax's mask on add_decayed_weights, worked out from each
leaf's path in the tree (params["3"]["kernel"], connectors["hint0.kernel"]).

The learning rate is a hyper-parameter in the optimizer state
(optax.inject_hyperparams): the harness passes it every step as an array, so
one compiled step serves every learning rate of a schedule.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def _is_kernel(path: tuple[Any, ...]) -> bool:
    """Whether a leaf's path ends in a kernel: the key "kernel" (a layer's
    params) or a neutral name ending in ".kernel" (a connector)."""
    last = path[-1]
    key = str(getattr(last, "key", getattr(last, "name", last)))
    return ("." + key).endswith(".kernel")


def kernels_mask(params: Any) -> Any:
    """True on the kernels of a params pytree (or a (params, connectors) pair)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _is_kernel(path), params)


def make_optimizer(config: dict[str, Any]) -> optax.GradientTransformation:
    # lr is set before every step (set_lr); 0.0 is only a placeholder.
    # torch adds wd * p to the gradient only when wd is set; so do we.
    wd = config["weight_decay"]
    which = config.get("decay", "all")
    if which not in ("all", "kernels"):
        raise ValueError(f"optimizer decay must be 'all' or 'kernels', got {which!r}")
    mask = kernels_mask if which == "kernels" else None
    decay = optax.add_decayed_weights(wd, mask=mask) if wd else optax.identity()
    if config["name"] == "sgd":
        momentum = config["momentum"] or None  # no buffer at 0, as in torch

        def sgd(learning_rate: jax.Array) -> optax.GradientTransformation:
            return optax.chain(
                decay,
                optax.sgd(learning_rate, momentum=momentum, nesterov=config["nesterov"]),
            )

        return optax.inject_hyperparams(sgd)(learning_rate=0.0)
    if config["name"] == "adam":

        def adam(learning_rate: jax.Array) -> optax.GradientTransformation:
            return optax.chain(
                decay,
                optax.adam(
                    learning_rate,
                    b1=config["beta1"],
                    b2=config["beta2"],
                    eps=config["eps"],
                    eps_root=0.0,
                ),
            )

        return optax.inject_hyperparams(adam)(learning_rate=0.0)
    raise ValueError(f"unknown optimizer {config['name']!r}")


def set_lr(state: Any, lr: jax.Array) -> Any:
    """The optimizer state with this step's learning rate (traced, not static)."""
    hyper = dict(state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(lr, dtype=hyper["learning_rate"].dtype)
    return state._replace(hyperparams=hyper)
