"""Synthetic point clouds of 3D shapes, for point-network distillation (PointDistiller miniature).

:func:`point_shapes` (registered as ``point_shapes``) samples ``points`` points uniformly (by
area) on the surface of one of eight shapes, then applies a random anisotropic scaling, a
random rotation about the vertical axis and Gaussian jitter, and rescales the cloud to a unit
bounding radius. Shapes that look alike under those changes (a sphere and an octahedron, a
cylinder and a cone, a cube and a square pyramid) make the task less than trivial for a small
network.

``x`` is ``[N, points, 3]`` (float32, xyz), ``y`` the shape class. Deterministic given ``seed``.
"""

from __future__ import annotations

import numpy as np

from ...errors import ConfigError
from ...registry import DATASETS
from ..datasets import ArrayDataset, DataSplits, _check_count

__all__ = ["SHAPES", "point_shapes", "sample_shape"]

SHAPES = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid", "octahedron", "lens")


def _triangles(rng: np.random.Generator, tris: np.ndarray, n: int) -> np.ndarray:
    """``n`` points uniform on a set of triangles ``[T, 3, 3]`` (by area)."""
    a, b, c = tris[:, 0], tris[:, 1], tris[:, 2]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    t = rng.choice(len(tris), size=n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    return a[t] + u[:, None] * (b[t] - a[t]) + v[:, None] * (c[t] - a[t])


def sample_shape(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, 3]`` points uniform (by area) on the surface of shape ``name`` (before any warp)."""
    if name in ("sphere", "lens"):
        p = rng.normal(size=(n, 3))
        p /= np.linalg.norm(p, axis=1, keepdims=True)
        return p * (np.array([1.0, 1.0, 0.45]) if name == "lens" else 1.0)
    if name == "cube":
        face = rng.integers(0, 6, n)
        p = rng.uniform(-1, 1, (n, 3))
        axis, sign = face // 2, np.where(face % 2 == 0, -1.0, 1.0)
        p[np.arange(n), axis] = sign
        return p
    if name == "cylinder":  # radius 1, height 2: side 4 pi, caps 2 pi
        side = rng.random(n) < 4 / 6
        theta = rng.uniform(0, 2 * np.pi, n)
        r = np.where(side, 1.0, np.sqrt(rng.random(n)))
        z = np.where(side, rng.uniform(-1, 1, n), np.where(rng.random(n) < 0.5, -1.0, 1.0))
        return np.stack([r * np.cos(theta), r * np.sin(theta), z], 1)
    if name == "cone":  # base radius 1 at z = -1, apex at z = 1: lateral pi * sqrt(5), base pi
        lateral = rng.random(n) < np.sqrt(5) / (np.sqrt(5) + 1)
        theta = rng.uniform(0, 2 * np.pi, n)
        s = np.sqrt(rng.random(n))  # distance from the apex, uniform by area
        r = np.where(lateral, s, np.sqrt(rng.random(n)))
        z = np.where(lateral, 1 - 2 * s, -1.0)
        return np.stack([r * np.cos(theta), r * np.sin(theta), z], 1)
    if name == "torus":  # R = 1, r = 0.35, uniform by area (rejection on the tube angle)
        out = []
        while sum(len(o) for o in out) < n:
            u = rng.uniform(0, 2 * np.pi, 2 * n)
            v = rng.uniform(0, 2 * np.pi, 2 * n)
            keep = rng.random(2 * n) < (1 + 0.35 * np.cos(v)) / 1.35
            u, v = u[keep], v[keep]
            out.append(np.stack([(1 + 0.35 * np.cos(v)) * np.cos(u), (1 + 0.35 * np.cos(v)) * np.sin(u), 0.35 * np.sin(v)], 1))
        return np.concatenate(out)[:n]
    if name == "pyramid":  # square base at z = -1, apex at z = 1
        base = np.array([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1]], dtype=float)
        apex = np.array([0.0, 0.0, 1.0])
        tris = [np.stack([base[i], base[(i + 1) % 4], apex]) for i in range(4)]
        tris += [np.stack([base[0], base[1], base[2]]), np.stack([base[0], base[2], base[3]])]
        return _triangles(rng, np.stack(tris), n)
    if name == "octahedron":
        tris = []
        for sx in (-1, 1):
            for sy in (-1, 1):
                for sz in (-1, 1):
                    tris.append(np.array([[sx, 0, 0], [0, sy, 0], [0, 0, sz]], dtype=float))
        return _triangles(rng, np.stack(tris), n)
    raise ConfigError(f"Unknown shape {name!r}; shapes: {', '.join(SHAPES)}.")


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation about the vertical (z) axis by a uniform angle (objects stand upright, as in driving scenes)."""
    a = rng.uniform(0, 2 * np.pi)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def _draw(rng: np.random.Generator, per_class: int, points: int, classes: int, stretch: float, jitter: float) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for c in range(classes):
        for _ in range(per_class):
            p = sample_shape(SHAPES[c], points, rng)
            p = p * rng.uniform(1 - stretch, 1 + stretch, 3)
            p = p @ _random_rotation(rng).T
            p = p + rng.normal(scale=jitter, size=p.shape)
            p = p - p.mean(0)
            p = p / np.linalg.norm(p, axis=1).max()
            xs.append(p)
            ys.append(c)
    x, y = np.stack(xs).astype(np.float32), np.array(ys, dtype=np.int64)
    order = rng.permutation(len(y))
    return x[order], y[order]


@DATASETS.register("point_shapes")
def point_shapes(
    classes: int = 8,
    points: int = 256,
    train_per_class: int = 100,
    test_per_class: int = 50,
    stretch: float = 0.3,
    jitter: float = 0.03,
    seed: int = 0,
) -> DataSplits:
    """Point clouds ``x [N, points, 3]`` of ``classes`` shapes (the first of :data:`SHAPES`).

    Each cloud: ``points`` surface samples, scaled per axis by a factor in ``[1 - stretch,
    1 + stretch]``, rotated about z by a random angle, jittered by ``N(0, jitter^2)`` per coordinate, centred and
    scaled to a unit bounding radius. ``train_per_class`` / ``test_per_class`` clouds per class.
    """
    classes = _check_count(classes, "classes", 2)
    if classes > len(SHAPES):
        raise ConfigError(f"point_shapes: at most {len(SHAPES)} classes ({', '.join(SHAPES)}), got {classes}.")
    points = _check_count(points, "points", 4)
    train_per_class = _check_count(train_per_class, "train_per_class", 1)
    test_per_class = _check_count(test_per_class, "test_per_class", 1)
    if not 0 <= float(stretch) < 1 or float(jitter) < 0:
        raise ConfigError(f"point_shapes: stretch must be in [0, 1) and jitter >= 0, got {stretch!r} and {jitter!r}.")
    rng_train = np.random.default_rng([seed, 25, 0])
    rng_test = np.random.default_rng([seed, 25, 1])
    xtr, ytr = _draw(rng_train, train_per_class, points, classes, float(stretch), float(jitter))
    xte, yte = _draw(rng_test, test_per_class, points, classes, float(stretch), float(jitter))
    return DataSplits(
        train=ArrayDataset(xtr, ytr),
        test=ArrayDataset(xte, yte),
        unlabeled=None,
        num_classes=classes,
        input_shape=(points, 3),
        name="point_shapes",
        class_names=SHAPES[:classes],
    )
