"""Random crop and horizontal flip on the device (kdbench.backends.base.Augment).

One gather does it all. Output pixel (b, i, j) of a crop at (dy, dx) of the
image padded by p is pixel (dy - p + i, dx - p + j) of image b, or the fill
value where that falls outside the image; a flipped row reads column
dx - p + W - 1 - j instead. So the batch is gathered from the whole split with
those (clamped) row and column indices, the batch's own index_select folded
in, and torch.where puts the fill value where the source is padding: no padded
copy of the batch is made, and every pixel is a copy (the same bits as the
oracle's pad, slice and mirror). The result is a contiguous NHWC batch, whose
NCHW view (model.as_nchw) is channels-last like an unaugmented batch's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kdbench.backends.base import Augment


@dataclass(frozen=True)
class DeviceAugment:
    """An Augment made ready on the device once (in init_train): the fill
    value per channel and the row and column ranges."""

    pad: int
    fill: torch.Tensor  # (C,), float32 (cast to the data's dtype where that differs)
    rows: torch.Tensor  # arange(H), int64
    cols: torch.Tensor  # arange(W), int64


def device_augment(augment: Augment, shape: tuple[int, ...], device: torch.device) -> DeviceAugment:
    """augment for images of shape (H, W, C) on device."""
    h, w, c = shape
    if len(augment.fill) != c:
        raise ValueError(f"augment.fill has {len(augment.fill)} values for {c} channels")
    return DeviceAugment(
        pad=augment.pad,
        fill=torch.tensor(augment.fill, dtype=torch.float32, device=device),
        rows=torch.arange(h, device=device),
        cols=torch.arange(w, device=device),
    )


def crops_tensor(crops: np.ndarray, device: torch.device) -> torch.Tensor:
    """The step's (batch, 3) int32 rows (dy, dx, flip) on the device."""
    return torch.from_numpy(np.ascontiguousarray(crops)).to(device, non_blocking=True)


def augmented_nhwc(
    x: torch.Tensor, idx: torch.Tensor, crops: torch.Tensor, aug: DeviceAugment
) -> torch.Tensor:
    """x[idx] padded, cropped at each row's (dy, dx) and mirrored where flip
    is 1: (batch, H, W, C), contiguous."""
    h, w = x.shape[1], x.shape[2]
    crops = crops.long()
    top = (crops[:, 0] - aug.pad).unsqueeze(1)  # (B, 1)
    left = (crops[:, 1] - aug.pad).unsqueeze(1)
    flip = crops[:, 2].unsqueeze(1) != 0
    rows = top + aug.rows  # (B, H): source rows
    cols = left + torch.where(flip, (w - 1) - aug.cols, aug.cols)  # (B, W): source columns
    inside = ((rows >= 0) & (rows < h)).unsqueeze(2) & ((cols >= 0) & (cols < w)).unsqueeze(1)
    pixels = x[
        idx.long().unsqueeze(1).unsqueeze(2),
        rows.clamp(0, h - 1).unsqueeze(2),
        cols.clamp(0, w - 1).unsqueeze(1),
    ]  # (B, H, W, C)
    return torch.where(inside.unsqueeze(3), pixels, aug.fill.to(pixels.dtype))
