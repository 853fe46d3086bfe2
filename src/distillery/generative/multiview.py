"""Multi-view procedural scenes, a pinhole ray caster, point splatting and correspondence scoring.

The engine parts of the Splat and Distill miniature (Shavin & Benaim 2026, arXiv:2602.06032;
:mod:`distillery.recipes.splat_distill`), all in plain torch:

* :func:`random_scene`: a few coloured primitives (spheres, axis-aligned boxes) on a textured
  ground disc; every surface carries a texture defined in *world* coordinates, so a surface
  point has the same colour from every viewpoint (Lambertian shading from a fixed light, also
  view-independent);
* :func:`orbit_camera`, :func:`look_at`, :func:`intrinsics`: pinhole cameras (camera frame
  x right, y down, z forward; pixel ``(row v, col u)`` with centres at integer coordinates);
* :func:`render`: an analytic ray caster giving, per pixel, colour, z-depth (camera-frame z,
  ``inf`` on the sky), the 3-D point, the primitive index and a class map;
* :func:`unproject` / :func:`project`: lifting pixels with known depth to 3-D and back;
* :func:`splat_index` and :func:`splat_features`: z-buffered point splatting. Every pixel of
  the context views is lifted to its 3-D point and projected into the target camera; a target
  pixel takes the nearest (smallest-depth) point that lands in it. Because the winner depends
  only on geometry, splatting is an index map (``index [H*W]`` into the stacked context pixels,
  ``-1`` for holes) applied to any per-pixel features by a gather;
* :func:`correspondences` and :func:`correspondence_accuracy`: pixel pairs of two views that
  see the same surface point (projection plus a depth test), and the share of them whose
  nearest neighbour in feature space (cosine) lands within ``radius`` pixels of the true match.

Shapes: one view is ``[3, H, W]`` (colour) / ``[H, W]`` (depth); ``V`` views stack on a first dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError, ShapeError

__all__ = [
    "CLASSES",
    "Scene",
    "correspondence_accuracy",
    "correspondences",
    "intrinsics",
    "look_at",
    "multiview_set",
    "orbit_camera",
    "project",
    "random_scene",
    "render",
    "splat_features",
    "splat_index",
    "unproject",
]

#: class map values of :func:`render`
CLASSES = ("sky", "ground", "sphere", "box")
GROUND_RADIUS = 2.6
LIGHT = (0.45, -0.35, 0.82)
SKY = (0.62, 0.72, 0.86)


@dataclass
class Scene:
    """Primitives of one scene (world frame, z up; the ground is the disc ``z = 0``, radius 2.6).

    ``kind [P]`` (2 sphere, 3 box), ``center [P, 3]``, ``size [P, 3]`` (sphere: the radius in
    every entry; box: half extents), ``color [P, 3]`` in ``[0, 1]``, ``freq [P, 2, 3]`` and
    ``phase [P, 2]``: the texture ``0.5 + 0.5 sin(w_1 . x + phi_1) sin(w_2 . x + phi_2)`` of a
    world point ``x``; ``ground [2, 3]``: the ground's two checker colours.
    """

    kind: torch.Tensor
    center: torch.Tensor
    size: torch.Tensor
    color: torch.Tensor
    freq: torch.Tensor
    phase: torch.Tensor
    ground: torch.Tensor


def random_scene(generator: torch.Generator, primitives: tuple[int, int] = (2, 4)) -> Scene:
    """A scene of ``primitives[0]`` to ``primitives[1]`` spheres and boxes resting on the ground,
    placed without overlap inside a radius-1.6 disc, each with a random colour and texture."""
    lo, hi = int(primitives[0]), int(primitives[1])
    if lo < 1 or hi < lo:
        raise ConfigError(f"random_scene: primitives must be (min, max) with 1 <= min <= max, got {primitives!r}.")

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, dtype=torch.float64)

    n = lo + int(torch.randint(hi - lo + 1, (1,), generator=generator))
    kinds, centers, sizes = [], [], []
    for _ in range(n):
        for _attempt in range(50):
            kind = 2 + int(u(1) < 0.5)
            if kind == 2:
                r = 0.3 + 0.25 * float(u(1))
                size = torch.full((3,), r, dtype=torch.float64)
            else:
                size = 0.22 + 0.25 * u(3)
            radius = 1.6 * math.sqrt(float(u(1)))
            angle = 2 * math.pi * float(u(1))
            center = torch.tensor([radius * math.cos(angle), radius * math.sin(angle), float(size[2])], dtype=torch.float64)
            reach = float(size.max()) * (1.0 if kind == 2 else math.sqrt(2))
            if all(float((center[:2] - c[:2]).norm()) > reach + float(s.max()) * 1.45 for c, s in zip(centers, sizes)):
                break
        kinds.append(kind)
        centers.append(center)
        sizes.append(size)
    direction = F.normalize(torch.randn(n, 2, 3, generator=generator, dtype=torch.float64), dim=-1)
    freq = direction * (5.0 + 5.0 * u(n, 2, 1))
    return Scene(
        kind=torch.tensor(kinds),
        center=torch.stack(centers),
        size=torch.stack(sizes),
        color=0.15 + 0.85 * u(n, 3),
        freq=freq,
        phase=2 * math.pi * u(n, 2),
        ground=0.25 + 0.6 * u(2, 3),
    )


# -- cameras -------------------------------------------------------------------------------------
def intrinsics(size: int, fov_degrees: float = 50.0) -> torch.Tensor:
    """Pinhole intrinsics ``K [3, 3]`` of a ``size x size`` image with horizontal field of view
    ``fov_degrees``; the principal point is the image centre ``((size - 1) / 2, (size - 1) / 2)``."""
    if size < 2 or not 1.0 < fov_degrees < 179.0:
        raise ConfigError(f"intrinsics: size >= 2 and 1 < fov_degrees < 179 needed, got {size} and {fov_degrees}.")
    f = (size / 2) / math.tan(math.radians(fov_degrees) / 2)
    c = (size - 1) / 2
    return torch.tensor([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]], dtype=torch.float64)


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
    """Camera-to-world pose ``[4, 4]`` of a camera at ``eye [3]`` looking at ``target [3]``.

    Columns of the rotation: right, down, forward (the camera frame's x, y, z); ``up`` defaults
    to world z."""
    eye, target = eye.double(), target.double()
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) if up is None else up.double()
    forward = F.normalize(target - eye, dim=0)
    right = torch.linalg.cross(forward, up)
    if float(right.norm()) < 1e-9:
        raise ConfigError("look_at: the viewing direction is parallel to 'up'.")
    right = F.normalize(right, dim=0)
    down = torch.linalg.cross(forward, right)
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, eye
    return pose


def orbit_camera(azimuth_degrees: float, elevation_degrees: float = 38.0, distance: float = 4.0,
                 target: tuple[float, float, float] = (0.0, 0.0, 0.2)) -> torch.Tensor:
    """Camera-to-world pose ``[4, 4]`` on a sphere of radius ``distance`` around ``target``."""
    az, el = math.radians(azimuth_degrees), math.radians(elevation_degrees)
    t = torch.tensor(target, dtype=torch.float64)
    eye = t + distance * torch.tensor([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)], dtype=torch.float64)
    return look_at(eye, t)


def _pixel_grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    v, u = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij")
    return v.reshape(-1), u.reshape(-1)


def unproject(depth: torch.Tensor, K: torch.Tensor, cam2world: torch.Tensor) -> torch.Tensor:
    """World points ``[H*W, 3]`` of the pixels of a ``depth [H, W]`` map (camera-frame z):
    ``X = R z K^-1 (u, v, 1) + t``. Pixels of infinite depth give non-finite points."""
    if depth.ndim != 2 or depth.shape[0] != depth.shape[1]:
        raise ShapeError(f"unproject: a square depth map [H, W] needed, got {list(depth.shape)}.")
    v, u = _pixel_grid(depth.shape[0])
    K = K.double()
    cam = torch.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)], dim=1)
    cam = cam * depth.double().reshape(-1, 1)
    return cam @ cam2world[:3, :3].double().T + cam2world[:3, 3].double()


def project(points: torch.Tensor, K: torch.Tensor, cam2world: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates ``[N, 2]`` as (row v, col u) and camera-frame depth ``z [N]`` of world
    ``points [N, 3]`` seen by the camera ``cam2world``."""
    if points.ndim != 2 or points.shape[1] != 3:
        raise ShapeError(f"project: points [N, 3] needed, got {list(points.shape)}.")
    R, t = cam2world[:3, :3].double(), cam2world[:3, 3].double()
    cam = (points.double() - t) @ R  # R^T (X - t), row-wise
    z = cam[:, 2]
    K = K.double()
    u = K[0, 0] * cam[:, 0] / z + K[0, 2]
    v = K[1, 1] * cam[:, 1] / z + K[1, 2]
    return torch.stack([v, u], dim=1), z


# -- rendering -----------------------------------------------------------------------------------
def _texture(points: torch.Tensor, freq: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    a = torch.sin(points @ freq[0] + phase[0])
    b = torch.sin(points @ freq[1] + phase[1])
    return 0.5 + 0.5 * a * b


def render(scene: Scene, K: torch.Tensor, cam2world: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    """Ray-cast one view of ``scene``.

    Returns ``rgb [3, H, W]`` (float32 in [0, 1]), ``depth [H, W]`` (camera-frame z, float64,
    ``inf`` on the sky), ``points [H, W, 3]`` (world, float64), ``primitive [H, W]`` (int64: -1
    sky, 0 ground, 1 + i the scene's primitive i) and ``classes [H, W]`` (indices of
    :data:`CLASSES`). Colour: ``albedo (0.35 + 0.65 max(0, n . l))`` with the world-space texture
    as albedo, so a surface point has the same colour from every viewpoint.
    """
    v, u = _pixel_grid(size)
    K = K.double()
    d_cam = torch.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)], dim=1)
    R, origin = cam2world[:3, :3].double(), cam2world[:3, 3].double()
    d = d_cam @ R.T  # ray directions whose parameter t is the camera-frame depth
    n_pix = d.shape[0]
    best = torch.full((n_pix,), math.inf, dtype=torch.float64)
    prim = torch.full((n_pix,), -1, dtype=torch.long)
    normal = torch.zeros(n_pix, 3, dtype=torch.float64)
    # ground disc z = 0
    with torch.no_grad():
        t = -origin[2] / d[:, 2]
        hit = origin + t[:, None] * d
        ok = (t > 1e-6) & (hit[:, :2].norm(dim=1) <= GROUND_RADIUS)
        best = torch.where(ok, t, best)
        prim = torch.where(ok, torch.zeros_like(prim), prim)
        normal[ok] = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        for i in range(len(scene.kind)):
            c, s = scene.center[i].double(), scene.size[i].double()
            if int(scene.kind[i]) == 2:  # sphere: |o + t d - c|^2 = r^2
                oc = origin - c
                a = (d * d).sum(1)
                b = 2 * (d @ oc)
                cc = float(oc @ oc) - float(s[0]) ** 2
                disc = b * b - 4 * a * cc
                t = (-b - torch.sqrt(disc.clamp_min(0))) / (2 * a)
                ok = (disc >= 0) & (t > 1e-6) & (t < best)
                p = origin + t[:, None] * d
                n_i = (p - c) / s[0]
            else:  # axis-aligned box, slab method
                inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
                t0 = (c - s - origin) * inv
                t1 = (c + s - origin) * inv
                t_near = torch.minimum(t0, t1).amax(1)
                t_far = torch.maximum(t0, t1).amin(1)
                t = t_near
                ok = (t_near <= t_far) & (t_near > 1e-6) & (t < best)
                p = origin + t[:, None] * d
                local = (p - c) / s
                axis = local.abs().argmax(1)
                n_i = torch.zeros_like(p)
                n_i[torch.arange(n_pix), axis] = torch.sign(local[torch.arange(n_pix), axis])
            best = torch.where(ok, t, best)
            prim = torch.where(ok, torch.full_like(prim, i + 1), prim)
            normal[ok] = n_i[ok]
    sky = prim < 0
    points = origin + torch.where(sky, torch.zeros_like(best), best)[:, None] * d
    albedo = torch.empty(n_pix, 3, dtype=torch.float64)
    g = prim == 0
    if g.any():
        cell = (torch.floor(points[g, 0] / 0.55) + torch.floor(points[g, 1] / 0.55)).remainder(2).long()
        wave = 0.75 + 0.25 * torch.sin(7.0 * points[g, 0] + 3.0 * points[g, 1])
        albedo[g] = scene.ground.double()[cell] * wave[:, None]
    for i in range(len(scene.kind)):
        m = prim == i + 1
        if m.any():
            tex = _texture(points[m], scene.freq[i].double(), scene.phase[i].double())
            albedo[m] = scene.color[i].double() * (0.3 + 0.7 * tex[:, None])
    light = F.normalize(torch.tensor(LIGHT, dtype=torch.float64), dim=0)
    shade = 0.35 + 0.65 * (normal @ light).clamp_min(0)
    rgb = (albedo * shade[:, None]).clamp(0, 1)
    rgb[sky] = torch.tensor(SKY, dtype=torch.float64)
    kind = torch.cat([torch.tensor([1]), scene.kind.long()])  # ground, then the primitives' kinds
    classes = torch.where(sky, torch.zeros_like(prim), kind[prim.clamp_min(0)])
    return {
        "rgb": rgb.T.reshape(3, size, size).float(),
        "depth": best.reshape(size, size),
        "points": points.reshape(size, size, 3),
        "primitive": prim.reshape(size, size),
        "classes": classes.reshape(size, size),
    }


# -- splatting -----------------------------------------------------------------------------------
def splat_index(depths: torch.Tensor, K: torch.Tensor, context_poses: torch.Tensor, target_pose: torch.Tensor,
                near: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Z-buffered point splatting of the pixels of ``V`` context views into a target view.

    ``depths [V, H, W]`` (camera-frame z of each context view, ``inf`` where nothing is seen),
    ``K [3, 3]`` (shared), ``context_poses [V, 4, 4]`` and ``target_pose [4, 4]``
    (camera-to-world). Each finite-depth context pixel is lifted to 3-D, projected into the
    target and rounded to the nearest pixel; of the points landing in a target pixel the one
    of smallest target depth wins (ties: the largest source index). Returns ``index [H*W]``
    (int64, into the ``V*H*W`` stacked context pixels, ``-1`` for a hole) and ``mask [H, W]``
    (bool, ``index >= 0``).
    """
    if depths.ndim != 3 or depths.shape[1] != depths.shape[2]:
        raise ShapeError(f"splat_index: depths [V, H, W] with H == W needed, got {list(depths.shape)}.")
    if context_poses.shape != (depths.shape[0], 4, 4):
        raise ShapeError(f"splat_index: context_poses must be [{depths.shape[0]}, 4, 4], got {list(context_poses.shape)}.")
    V, H, W = depths.shape
    pts = torch.cat([unproject(depths[i], K, context_poses[i]) for i in range(V)])  # [V*H*W, 3]
    finite = torch.isfinite(depths.reshape(-1))
    vu, z = project(torch.where(finite[:, None], pts, torch.zeros_like(pts)), K, target_pose)
    pix = torch.round(vu).long()
    ok = finite & (z > near) & (pix[:, 0] >= 0) & (pix[:, 0] < H) & (pix[:, 1] >= 0) & (pix[:, 1] < W)
    src = torch.nonzero(ok).flatten()
    dst = pix[src, 0] * W + pix[src, 1]
    zbuf = torch.full((H * W,), math.inf, dtype=torch.float64).scatter_reduce(0, dst, z[src], reduce="amin")
    winners = z[src] <= zbuf[dst]
    index = torch.full((H * W,), -1, dtype=torch.long).scatter_reduce(0, dst[winners], src[winners], reduce="amax")
    return index, (index >= 0).reshape(H, W)


def splat_features(features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Render per-pixel features of the context views into the target view by a splat index.

    ``features [B, V, C, H, W]`` (or ``[V, C, H, W]`` for one sample), ``index [B, H*W]`` (or
    ``[H*W]``) from :func:`splat_index`. Returns ``[B, C, H, W]`` (``[C, H, W]``): target pixel
    ``q`` holds the feature of context pixel ``index[q]``, zeros in holes. Differentiable in
    ``features``."""
    single = features.ndim == 4
    if single:
        features, index = features.unsqueeze(0), index.unsqueeze(0)
    if features.ndim != 5 or index.ndim != 2 or index.shape[0] != features.shape[0]:
        raise ShapeError(f"splat_features: features [B, V, C, H, W] and index [B, H*W] needed, got "
                         f"{list(features.shape)} and {list(index.shape)}.")
    B, V, C, H, W = features.shape
    if index.shape[1] != H * W:
        raise ShapeError(f"splat_features: index has {index.shape[1]} entries, the view {H * W} pixels.")
    if int(index.max()) >= V * H * W:
        raise ShapeError(f"splat_features: index {int(index.max())} is out of range for {V} context views.")
    flat = features.permute(0, 2, 1, 3, 4).reshape(B, C, V * H * W)
    hole = index < 0
    out = torch.gather(flat, 2, index.clamp_min(0).unsqueeze(1).expand(B, C, H * W))
    out = out.masked_fill(hole.unsqueeze(1), 0.0)
    out = out.reshape(B, C, H, W)
    return out[0] if single else out


# -- data sets -----------------------------------------------------------------------------------
def multiview_set(scenes: int, views: int = 3, size: int = 16, seed: int = 0, fov_degrees: float = 50.0,
                  azimuth_step: tuple[float, float] = (25.0, 45.0), elevation: tuple[float, float] = (30.0, 45.0),
                  distance: float = 3.4) -> dict[str, torch.Tensor]:
    """``scenes`` random scenes, each rendered from ``views`` orbit cameras, with splat indices.

    View ``v`` of a scene sits at azimuth ``a0 + sum of v steps`` drawn from ``azimuth_step``
    (degrees; ``a0`` uniform), elevation drawn from ``elevation``, at ``distance`` from the scene
    centre. Returns ``rgb [N, V, 3, S, S]`` (float32), ``classes [N, V, S, S]`` (int64),
    ``depth [N, V, S, S]`` (float64, ``inf`` on the sky), ``poses [N, V, 4, 4]`` (camera-to-world),
    ``K [3, 3]`` and ``splat [N, V, S*S]``: for each view, the :func:`splat_index` of the other
    ``V - 1`` views (in increasing order) into it. Deterministic in ``seed``.
    """
    if scenes < 1 or views < 2:
        raise ConfigError(f"multiview_set: scenes >= 1 and views >= 2 needed, got {scenes} and {views}.")
    g = torch.Generator().manual_seed(int(seed))
    K = intrinsics(size, fov_degrees)
    rgb = torch.zeros(scenes, views, 3, size, size)
    classes = torch.zeros(scenes, views, size, size, dtype=torch.long)
    depth = torch.zeros(scenes, views, size, size, dtype=torch.float64)
    poses = torch.zeros(scenes, views, 4, 4, dtype=torch.float64)
    splat = torch.zeros(scenes, views, size * size, dtype=torch.long)

    def draw(lo_hi: tuple[float, float]) -> float:
        return float(lo_hi[0]) + (float(lo_hi[1]) - float(lo_hi[0])) * float(torch.rand(1, generator=g, dtype=torch.float64))

    for i in range(scenes):
        scene = random_scene(g)
        azimuth = draw((0.0, 360.0))
        for v in range(views):
            if v:
                azimuth += draw(azimuth_step)
            poses[i, v] = orbit_camera(azimuth, draw(elevation), distance)
            r = render(scene, K, poses[i, v], size)
            rgb[i, v], classes[i, v], depth[i, v] = r["rgb"], r["classes"], r["depth"]
        for v in range(views):
            others = [w for w in range(views) if w != v]
            splat[i, v] = splat_index(depth[i, others], K, poses[i, others], poses[i, v])[0]
    return {"rgb": rgb, "classes": classes, "depth": depth, "poses": poses, "K": K, "splat": splat}


# -- correspondence ------------------------------------------------------------------------------
def correspondences(depth_a: torch.Tensor, depth_b: torch.Tensor, K: torch.Tensor, pose_a: torch.Tensor,
                    pose_b: torch.Tensor, rel_tol: float = 0.03) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel pairs of views ``a`` and ``b`` that see the same surface point.

    A finite-depth pixel ``p`` of ``a`` is lifted to 3-D and projected into ``b``; it has a
    match ``q`` (the nearest pixel) when ``q`` lies in the image and ``b``'s depth at ``q`` agrees
    with the projected depth within ``rel_tol`` (relative), i.e. the point is not occluded in
    ``b``. Returns flat indices ``(idx_a [M], idx_b [M])``."""
    H, W = depth_a.shape
    pts = unproject(depth_a, K, pose_a)
    finite = torch.isfinite(depth_a.reshape(-1))
    vu, z = project(torch.where(finite[:, None], pts, torch.zeros_like(pts)), K, pose_b)
    pix = torch.round(vu).long()
    inside = finite & (z > 0) & (pix[:, 0] >= 0) & (pix[:, 0] < H) & (pix[:, 1] >= 0) & (pix[:, 1] < W)
    idx_b = pix[:, 0].clamp(0, H - 1) * W + pix[:, 1].clamp(0, W - 1)
    seen = depth_b.reshape(-1)[idx_b]
    visible = inside & torch.isfinite(seen) & ((seen - z).abs() <= rel_tol * z.abs())
    idx_a = torch.nonzero(visible).flatten()
    return idx_a, idx_b[idx_a]


def correspondence_accuracy(feat_a: torch.Tensor, feat_b: torch.Tensor, idx_a: torch.Tensor, idx_b: torch.Tensor,
                            radius: int = 1) -> float:
    """Nearest-neighbour matching accuracy of dense features across two views.

    ``feat_a``, ``feat_b``: ``[C, H, W]``; ``idx_a``, ``idx_b``: ``[M]`` flat indices of known
    corresponding pixels (:func:`correspondences`). For each ``p = idx_a[m]`` the pixel of ``b``
    whose feature has the largest cosine similarity to ``feat_a[:, p]`` (searched over all of
    ``b``'s pixels) counts as correct when it lies within ``radius`` pixels (Chebyshev) of
    ``idx_b[m]``. Returns the share of correct matches (``nan`` when ``M = 0``)."""
    if feat_a.ndim != 3 or feat_a.shape != feat_b.shape:
        raise ShapeError(f"correspondence_accuracy: two feature maps [C, H, W] of one shape needed, got "
                         f"{list(feat_a.shape)} and {list(feat_b.shape)}.")
    if idx_a.numel() == 0:
        return float("nan")
    C, _, W = feat_a.shape
    a = F.normalize(feat_a.reshape(C, -1).T[idx_a].float(), dim=1)
    b = F.normalize(feat_b.reshape(C, -1).T.float(), dim=1)
    nn_b = (a @ b.T).argmax(1)
    dr = (nn_b // W - idx_b // W).abs()
    dc = (nn_b % W - idx_b % W).abs()
    return float(((dr <= radius) & (dc <= radius)).float().mean())
