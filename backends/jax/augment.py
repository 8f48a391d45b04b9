"""Random crop and horizontal flip on the device (backends.base.Augment).

One gather does it all: the batch is padded with the per-channel fill, and
output pixel (b, i, j) reads the padded image at row dy_b + i and column
dx_b + j, or dx_b + W - 1 - j where the row is flipped. Copies only, no
arithmetic, so the pixels are exactly those of the numpy oracle (and of the
other frameworks). crops is a traced argument: one compiled step serves
every draw.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kdbench.backends.base import Augment


def augment_batch(xb: jax.Array, crops: jax.Array, augment: Augment) -> jax.Array:
    """xb: the gathered batch (B, H, W, C); crops: int32 (B, 3) rows (dy, dx, flip)."""
    b, h, w, c = xb.shape
    if len(augment.fill) != c:
        raise ValueError(f"augment.fill has {len(augment.fill)} values for {c} channels")
    p = augment.pad
    fill = np.asarray(augment.fill, dtype=np.float32).astype(xb.dtype)
    padded = jnp.broadcast_to(jnp.asarray(fill), (b, h + 2 * p, w + 2 * p, c))
    padded = padded.at[:, p : p + h, p : p + w, :].set(xb)  # a dynamic_update_slice: a copy
    crops = jnp.asarray(crops, dtype=jnp.int32)
    dy, dx, flip = crops[:, 0], crops[:, 1], crops[:, 2]
    i = jnp.arange(h, dtype=jnp.int32)
    j = jnp.arange(w, dtype=jnp.int32)
    rows = dy[:, None] + i  # (B, H)
    cols = dx[:, None] + jnp.where(flip[:, None] != 0, w - 1 - j, j)  # (B, W)
    batch = jnp.arange(b, dtype=jnp.int32)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]


def gather_augmented(x: jax.Array, idx: jax.Array, crops: jax.Array, augment: Augment) -> jax.Array:
    """x[idx], augmented: what the train step's student and teacher see."""
    return augment_batch(x[idx], crops, augment)


# Augment is a frozen dataclass (hashable): one executable per augmentation.
gather_augmented_jit = jax.jit(gather_augmented, static_argnums=3)
