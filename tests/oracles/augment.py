"""The numpy oracle of kdbench's augmentation (backends.base.Augment):
pad with the fill value, crop each image at its offset, mirror where flipped."""

from __future__ import annotations

import numpy as np

from kdbench.backends.base import Augment


def augment_batch(x: np.ndarray, augment: Augment, crops: np.ndarray) -> np.ndarray:
    """x: the gathered batch (B, H, W, C); crops: int32 (B, 3) rows (dy, dx, flip)."""
    b, h, w, c = x.shape
    p = augment.pad
    padded = np.empty((b, h + 2 * p, w + 2 * p, c), dtype=x.dtype)
    padded[...] = np.asarray(augment.fill, dtype=x.dtype)
    padded[:, p : p + h, p : p + w] = x
    out = np.empty_like(x)
    for i, (dy, dx, flip) in enumerate(crops):
        window = padded[i, dy : dy + h, dx : dx + w]
        out[i] = window[:, ::-1] if flip else window
    return out
