"""Random crop and horizontal flip on the device (kdbench.backends.base.Augment).

One gather does it all. Output pixel (b, i, j) of a crop at (dy, dx) of the
image padded by p is pixel (dy - p + i, dx - p + j) of image b, or the fill
value where that falls outside the image; a flipped row reads column
dx - p + W - 1 - j instead. So the batch is gathered from the whole split by
one tf.gather_nd on (sample index, clamped row, clamped column), the batch's
own gather folded in, and tf.where (a select) puts the per-channel fill value
where the source is padding: no padded copy of the batch is made, and every
pixel is a copy (the same bits as the oracle's pad, slice and mirror).

Only static shapes (H, W, C from the split, the batch from the indices) and
int32 index arithmetic: it traces once per batch shape and compiles under XLA
(jit_compile) as it runs in plain tf.function or eagerly. crops is a tensor
argument, so every draw reuses the trace.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kdbench.backends.base import Augment


def check_augment(augment: Augment, shape: tuple[int, ...]) -> None:
    """augment fits images of shape (H, W, C): one fill value per channel."""
    if len(augment.fill) != shape[-1]:
        raise ValueError(f"augment.fill has {len(augment.fill)} values for {shape[-1]} channels")
    if augment.pad < 0:
        raise ValueError(f"augment.pad must be >= 0, got {augment.pad}")


def gather_augmented(
    x: tf.Tensor, indices: tf.Tensor, crops: tf.Tensor, augment: Augment
) -> tf.Tensor:
    """x[indices] padded with augment.fill, cropped at each row's (dy, dx) and
    mirrored where flip is 1: (batch, H, W, C), x's dtype.

    x: the split (N, H, W, C); indices: int32 (batch,); crops: int32
    (batch, 3) rows (dy, dx, flip).
    """
    h, w, c = (int(d) for d in x.shape[1:])
    check_augment(augment, (h, w, c))
    crops = tf.cast(crops, tf.int32)
    indices = tf.cast(indices, tf.int32)
    top = crops[:, 0:1] - augment.pad  # (B, 1)
    left = crops[:, 1:2] - augment.pad
    flip = crops[:, 2:3] != 0
    i = tf.range(h, dtype=tf.int32)[None, :]  # (1, H)
    j = tf.range(w, dtype=tf.int32)[None, :]  # (1, W)
    rows = top + i  # (B, H): source rows
    cols = left + tf.where(flip, (w - 1) - j, j)  # (B, W): source columns
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    b = tf.shape(indices)[0]
    where = tf.stack(
        [
            tf.broadcast_to(indices[:, None, None], [b, h, w]),
            tf.broadcast_to(tf.clip_by_value(rows, 0, h - 1)[:, :, None], [b, h, w]),
            tf.broadcast_to(tf.clip_by_value(cols, 0, w - 1)[:, None, :], [b, h, w]),
        ],
        axis=-1,
    )  # (B, H, W, 3)
    pixels = tf.gather_nd(x, where)  # (B, H, W, C)
    fill = tf.constant(np.asarray(augment.fill, np.float32), dtype=tf.float32)
    return tf.where(inside[:, :, :, None], pixels, tf.cast(fill, x.dtype))
