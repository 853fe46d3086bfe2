"""Foreground sampling on a common grid (bird's-eye view): object keypoints, Gaussian masks, AP.

The three distillation losses of UniDistill (Zhou, Liu, Hu, Zhou & Ma 2023, arXiv:2303.15083)
are computed only on the foreground of a BEV feature map, from the ground-truth boxes:

* :func:`box_keypoints` - 9 keypoints per box (4 corners, the centre, 4 edge midpoints), so
  that every object contributes the same number of samples whatever its size ("size
  balancing");
* :func:`sample_points` - bilinear sampling of a feature map ``[B, C, H, W]`` at those points;
* :func:`gaussian_center_mask` - a Gaussian bump on each object's centre, radius from its size
  (CenterPoint's rule), zero on the background ("background filtering").

Boxes are ``[B, M, 4]`` rows ``(r0, c0, r1, c1)`` on the grid: the object covers the cells
``r0 <= row < r1`` and ``c0 <= col < c1`` (continuous coordinates, a cell ``(i, j)`` spans
``[i, i + 1) x [j, j + 1)``). Rows with ``r1 <= r0`` or ``c1 <= c0`` are padding (a batch holds a
fixed number of rows per sample).

For evaluation, :func:`heatmap_peaks` and :func:`center_average_precision` score a centre
heatmap as a detector: peaks (local maxima, as CenterNet's 3x3 max-pool) ranked by score,
matched greedily to the nearest unmatched object centre within ``max_distance`` cells, and the
area under the precision-recall curve (all-points interpolation, as in PASCAL VOC 2010+).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ShapeError

__all__ = [
    "box_keypoints",
    "center_average_precision",
    "gaussian_center_mask",
    "gaussian_radius",
    "heatmap_peaks",
    "sample_points",
    "valid_boxes",
]


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(str(int(s)) for s in t.shape) + "]"


def _check_boxes(boxes: Tensor, where: str) -> None:
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ShapeError(f"{where}: boxes must be [B, M, 4] rows (r0, c0, r1, c1), got {_shape(boxes)}.")


def valid_boxes(boxes: Tensor) -> Tensor:
    """Bool ``[B, M]``: the rows of ``boxes`` ``[B, M, 4]`` that are objects (not padding)."""
    _check_boxes(boxes, "valid_boxes")
    return (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


def box_keypoints(boxes: Tensor) -> Tensor:
    """The 9 keypoints ``[B, M, 9, 2]`` (row, col) of each box ``[B, M, 4]``.

    Order: the 4 corners (clockwise from top-left), the centre, the 4 edge midpoints (top,
    right, bottom, left). Corners are the centres of the box's corner cells (half a cell inside
    the box's outline, so that they sample the object, not the background next to it); the
    centre and the midpoints follow from them. Padding rows give points too; mask them with
    :func:`valid_boxes`.
    """
    _check_boxes(boxes, "box_keypoints")
    r0, c0, r1, c1 = boxes.unbind(-1)
    top, bottom = r0 + 0.5, r1 - 0.5
    left, right = c0 + 0.5, c1 - 0.5
    mid_r, mid_c = (top + bottom) / 2, (left + right) / 2
    rows = torch.stack([top, top, bottom, bottom, mid_r, top, mid_r, bottom, mid_r], dim=-1)
    cols = torch.stack([left, right, right, left, mid_c, mid_c, right, mid_c, left], dim=-1)
    return torch.stack([rows, cols], dim=-1)


def sample_points(feature_map: Tensor, points: Tensor) -> Tensor:
    """Bilinear samples ``[B, M, P, C]`` of ``feature_map`` ``[B, C, H, W]`` at ``points`` ``[B, M, P, 2]``.

    ``points`` are (row, col) in grid coordinates: cell ``(i, j)`` has its centre at
    ``(i + 0.5, j + 0.5)``, where the sample equals that cell's value exactly. Outside the map
    the feature is taken as 0.
    """
    if feature_map.ndim != 4 or points.ndim != 4 or points.shape[-1] != 2 or points.shape[0] != feature_map.shape[0]:
        raise ShapeError(f"sample_points: feature map [B, C, H, W] and points [B, M, P, 2] needed, got {_shape(feature_map)} and {_shape(points)}.")
    h, w = feature_map.shape[-2:]
    # grid_sample wants (x, y) in [-1, 1], with align_corners=False: -1 and 1 are the map's outer edges
    grid = torch.stack([2 * points[..., 1] / w - 1, 2 * points[..., 0] / h - 1], dim=-1).to(feature_map.dtype)
    out = F.grid_sample(feature_map, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # [B, C, M, P]
    return out.permute(0, 2, 3, 1)


def gaussian_radius(height: Tensor, width: Tensor, min_overlap: float = 0.7) -> Tensor:
    """CenterNet/CenterPoint's Gaussian radius for boxes of ``height x width`` cells.

    The largest centre offset for which a box of the same size still overlaps the true one with
    IoU >= ``min_overlap``: the smallest root of three quadratics (Law & Deng 2018, CornerNet;
    used by CenterPoint, Yin et al. 2021). Element-wise over tensors of the same shape.
    """
    h, w = height.double(), width.double()
    b1 = h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + torch.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3).to(height.dtype if height.is_floating_point() else torch.float32)


def gaussian_center_mask(boxes: Tensor, size: tuple[int, int], min_overlap: float = 0.7, min_radius: int = 0) -> Tensor:
    """``[B, H, W]``: for each cell, the largest Gaussian bump of an object centred near it.

    Each valid box of ``boxes`` ``[B, M, 4]`` puts ``exp(-(dr^2 + dc^2) / (2 sigma^2))`` on the
    cells within ``r = max(min_radius, floor(gaussian_radius(h, w)))`` rows and columns of its
    centre cell ``(floor((r0 + r1) / 2), floor((c0 + c1) / 2))``, with ``sigma = (2 r + 1) / 6``
    (CenterPoint's ``draw_gaussian``); the centre cell is 1. Cells near no object are 0. It is
    both the heatmap target of a centre-based detector and UniDistill's response-distillation
    mask.
    """
    _check_boxes(boxes, "gaussian_center_mask")
    h_map, w_map = int(size[0]), int(size[1])
    valid = valid_boxes(boxes)
    r0, c0, r1, c1 = boxes.float().unbind(-1)
    radius = gaussian_radius((r1 - r0).clamp_min(0), (c1 - c0).clamp_min(0), min_overlap)
    radius = torch.floor(torch.nan_to_num(radius, nan=0.0)).clamp_min(min_radius)  # [B, M]
    sigma = (2 * radius + 1) / 6
    cr = torch.floor((r0 + r1) / 2)
    cc = torch.floor((c0 + c1) / 2)
    rows = torch.arange(h_map, dtype=torch.float32, device=boxes.device).view(1, 1, -1, 1)
    cols = torch.arange(w_map, dtype=torch.float32, device=boxes.device).view(1, 1, 1, -1)
    dr = rows - cr[..., None, None]
    dc = cols - cc[..., None, None]
    bump = torch.exp(-(dr**2 + dc**2) / (2 * sigma[..., None, None] ** 2))  # [B, M, H, W]
    window = (dr.abs() <= radius[..., None, None]) & (dc.abs() <= radius[..., None, None])
    bump = torch.where(window & valid[..., None, None], bump, torch.zeros_like(bump))
    if bump.shape[1] == 0:
        return torch.zeros(boxes.shape[0], h_map, w_map, device=boxes.device)
    return bump.amax(dim=1)


def heatmap_peaks(heat: Tensor, kernel: int = 3, max_peaks: int = 50) -> tuple[Tensor, Tensor]:
    """Local maxima of ``heat`` ``[B, H, W]``: ``(scores [B, K], positions [B, K, 2])``, best first.

    A cell is a peak when it equals the max of its ``kernel x kernel`` window (CenterNet's
    max-pool "NMS"); ``K = min(max_peaks, H*W)``, non-peaks are filled with score ``-inf``.
    Positions are cell centres (row + 0.5, col + 0.5).
    """
    if heat.ndim != 3:
        raise ShapeError(f"heatmap_peaks: heat must be [B, H, W], got {_shape(heat)}.")
    b, h, w = heat.shape
    pooled = F.max_pool2d(heat.unsqueeze(1), kernel, stride=1, padding=kernel // 2).squeeze(1)
    scores = torch.where(heat == pooled, heat, torch.full_like(heat, -math.inf)).reshape(b, -1)
    k = min(int(max_peaks), h * w)
    top, idx = scores.topk(k, dim=1)
    pos = torch.stack([idx // w, idx % w], dim=-1).to(heat.dtype) + 0.5
    return top, pos


def center_average_precision(heat: Tensor, boxes: Tensor, max_distance: float = 1.5, kernel: int = 3, max_peaks: int = 50) -> float:
    """Detection AP of a centre heatmap ``[B, H, W]`` against ``boxes`` ``[B, M, 4]``.

    Peaks of every sample (:func:`heatmap_peaks`) are pooled and sorted by score. Going down the
    list, a peak is a true positive when an object of its sample whose centre
    ``((r0 + r1) / 2, (c0 + c1) / 2)`` lies within ``max_distance`` cells (Euclidean) is still
    unmatched (the nearest such object is taken), otherwise a false positive. AP is the area
    under the precision-recall curve with precision made monotone (all-points interpolation).
    Returns NaN when there is no object.
    """
    scores, pos = heatmap_peaks(heat.detach().float().cpu(), kernel, max_peaks)
    boxes = boxes.detach().float().cpu()
    valid = valid_boxes(boxes)
    centers = torch.stack([(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2], dim=-1)
    n_obj = int(valid.sum())
    if n_obj == 0:
        return float("nan")
    s = scores.numpy()
    order = np.argsort(-s, axis=None, kind="stable")
    matched = np.zeros(valid.shape, dtype=bool)
    c_np, v_np, p_np = centers.numpy(), valid.numpy(), pos.numpy()
    tp = []
    for flat in order:
        b, j = divmod(int(flat), s.shape[1])
        if not np.isfinite(s[b, j]):
            continue
        d = np.sqrt(((c_np[b] - p_np[b, j]) ** 2).sum(-1))
        d[~v_np[b] | matched[b]] = np.inf
        m = int(np.argmin(d)) if d.size else -1
        if m >= 0 and d[m] <= max_distance:
            matched[b, m] = True
            tp.append(1.0)
        else:
            tp.append(0.0)
    if not tp:
        return 0.0
    tp_arr = np.array(tp)
    ctp = np.cumsum(tp_arr)
    precision = ctp / np.arange(1, len(tp_arr) + 1)
    recall = ctp / n_obj
    # all-points interpolation: precision at recall r is the max precision at any recall >= r
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    r_prev = np.concatenate([[0.0], recall[:-1]])
    return float(((recall - r_prev) * precision).sum())
