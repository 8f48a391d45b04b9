"""Seeded random images for runs that measure speed only.

The images are not pure noise: each class has a random prototype and every
image is half prototype, half noise, so a model can learn them and a broken
training loop still shows up as chance accuracy. Pixels are uint8 like the
real datasets, so the data goes through the same split and normalisation.
"""

from __future__ import annotations

import numpy as np

from kdbench.datasets.split import RawData

# The second word of the synthetic stream's seed, distinct from the split's
# (ASCII "synt"), so the data and the split draw independent numbers.
SYNTHETIC_STREAM = 0x73796E74


def make_synthetic(
    *, seed: int, samples: int, shape: tuple[int, int, int], classes: int
) -> RawData:
    """``samples`` images of ``shape`` (H, W, C) with balanced labels in ``[0, classes)``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, SYNTHETIC_STREAM]))
    y = np.arange(samples) % classes
    rng.shuffle(y)
    prototypes = rng.random((classes, *shape), dtype=np.float32)
    x = np.empty((samples, *shape), dtype=np.uint8)
    step = max(1, (1 << 22) // max(1, int(np.prod(shape))))
    for i in range(0, samples, step):
        noise = rng.random((min(step, samples - i), *shape), dtype=np.float32)
        x[i : i + step] = np.floor((prototypes[y[i : i + step]] + noise) * 127.5)
    return RawData(
        x=x,
        y=y.astype(np.uint8 if classes <= 256 else np.int64),
        x_test=None,
        y_test=None,
        scale=255.0,
        source=f"synthetic(seed={seed})",
    )
