"""A float64 numpy oracle of the optimizers, in PyTorch's conventions.

SGD: g += wd * p (every parameter, or with decay = "kernels" only names
ending in ".kernel"); v = mu * v + g (v = g at the first step); p -= lr * v, or
p -= lr * (g + mu * v) with Nesterov. Adam: g += wd * p; m and v moments with
bias correction; p -= lr * m_hat / (sqrt(v_hat) + eps). Keras folds lr into
the momentum buffer and puts Adam's eps on sqrt(v) instead; those differ as
soon as lr changes or gradients are small, so every backend follows these.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ReferenceOptimizer:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.state: dict[str, dict[str, Any]] = {}
        self.t = 0

    def step(
        self, weights: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float
    ) -> dict[str, np.ndarray]:
        c = self.config
        self.t += 1
        out = {}
        for name, p in weights.items():
            p = p.astype(np.float64)
            decays = c.get("decay", "all") == "all" or name.endswith(".kernel")
            g = grads[name].astype(np.float64) + (c["weight_decay"] * p if decays else 0.0)
            s = self.state.setdefault(name, {})
            if c["name"] == "sgd":
                mu = c["momentum"]
                if mu:
                    s["v"] = g.copy() if "v" not in s else mu * s["v"] + g
                    direction = g + mu * s["v"] if c["nesterov"] else s["v"]
                else:
                    direction = g
                out[name] = p - lr * direction
            else:
                b1, b2 = c["beta1"], c["beta2"]
                s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
                s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
                m_hat = s["m"] / (1 - b1**self.t)
                v_hat = s["v"] / (1 - b2**self.t)
                out[name] = p - lr * m_hat / (np.sqrt(v_hat) + c["eps"])
        return out
