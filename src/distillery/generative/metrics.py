"""Sample-set metrics of the generative engine: numpy arrays or torch tensors in, floats out.

* :func:`sliced_wasserstein`: sliced ``p``-Wasserstein distance (Bonneel et al. 2015) by POT
  (Flamary et al. 2021, JMLR 22(78)) with a fixed set of random directions;
* :func:`mmd`: the unbiased estimate of the squared maximum mean discrepancy with an RBF
  kernel (Gretton et al. 2012, JMLR 13), median-heuristic bandwidth by default;
* :func:`mode_coverage`: mode coverage, precision ("high quality" samples) and recall per mode
  of a Gaussian mixture, and the KL of the mode histogram (as in Srivastava et al. 2017,
  arXiv:1705.07761; Lin et al. 2018, arXiv:1712.04086);
* :func:`digits_fd`: a Frechet distance (Heusel et al. 2017, arXiv:1706.08500) in the 64-d
  penultimate features of :class:`DigitFeatureNet`, a small CNN trained on scikit-learn's
  bundled 8x8 digits, computed by torchmetrics' ``FrechetInceptionDistance`` with that
  network as its feature extractor (no torchvision, no downloaded weights);
* :func:`timed_sampling`: network evaluations (NFE) and wall time per sample of a sampler.

Samples are ``(N, ...)``: ``(N, 2)`` points, ``(N, C, H, W)`` images; set metrics flatten them
to ``(N, D)``. POT, torchmetrics and scikit-learn are imported inside the functions that use
them.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, ShapeError


def _as_2d(x: Any, name: str) -> np.ndarray:
    """``(N, ...)`` array or tensor -> float64 ``(N, D)`` numpy array."""
    if torch.is_tensor(x):
        x = x.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise ShapeError(f"{name} must be a non-empty set of samples (N, ...); got shape {arr.shape}.")
    arr = arr.reshape(arr.shape[0], -1)
    if not np.isfinite(arr).all():
        raise ShapeError(f"{name} contains NaN or infinite values.")
    return arr


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a2, b2 = _as_2d(a, "a"), _as_2d(b, "b")
    if a2.shape[1] != b2.shape[1]:
        raise ShapeError(f"Sample sets of different sizes per sample: a has {a2.shape[1]} values, b has {b2.shape[1]}.")
    return a2, b2


# ---------------------------------------------------------------------------- sliced Wasserstein
def sliced_wasserstein(a: Any, b: Any, *, projections: int = 256, p: float = 2, seed: int = 0) -> float:
    """Sliced ``p``-Wasserstein distance between the sample sets ``a`` ``(N, ...)`` and ``b``
    ``(M, ...)``: ``SW_p = (1/L sum_l W_p^p(<theta_l, a>, <theta_l, b>))^(1/p)`` over ``L =
    projections`` unit directions drawn from ``numpy.random.default_rng(seed)`` (so the same
    directions every call), by ``ot.sliced_wasserstein_distance`` (POT). For 1-D samples
    ``SW_p = W_p`` exactly."""
    if projections < 1:
        raise ConfigError(f"projections must be a positive integer; got {projections!r}.")
    if p < 1:
        raise ConfigError(f"p must be >= 1; got {p!r}.")
    import ot

    a2, b2 = _pair(a, b)
    theta = np.random.default_rng(seed).standard_normal((a2.shape[1], projections))
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    return float(ot.sliced_wasserstein_distance(a2, b2, projections=theta, p=p))


# ------------------------------------------------------------------------------------------ MMD
def median_bandwidth(a: Any, b: Any, *, max_points: int = 2000, seed: int = 0) -> float:
    """The median heuristic: the median Euclidean distance between distinct points of the pooled
    set ``a`` + ``b`` (a random subset of ``max_points`` when larger; Gretton et al. 2012)."""
    a2, b2 = _pair(a, b)
    pooled = np.concatenate([a2, b2])
    if len(pooled) > max_points:
        pooled = pooled[np.random.default_rng(seed).choice(len(pooled), max_points, replace=False)]
    z = torch.from_numpy(pooled)
    d = torch.cdist(z, z)
    iu = torch.triu_indices(len(z), len(z), offset=1)
    h = float(d[iu[0], iu[1]].median()) if len(z) > 1 else 0.0
    return h if h > 0 else 1.0


def mmd(a: Any, b: Any, *, bandwidths: float | Sequence[float] | None = None) -> float:
    """Unbiased estimate of the squared maximum mean discrepancy ``MMD^2(P, Q)`` (Gretton et al.
    2012, JMLR 13, eq. 3) between ``a`` ``(N, ...)`` ~ P and ``b`` ``(M, ...)`` ~ Q (N, M >= 2):

        ``MMD^2_u = 1/(N(N-1)) sum_{i != j} k(a_i, a_j) + 1/(M(M-1)) sum_{i != j} k(b_i, b_j)
                    - 2/(NM) sum_{i, j} k(a_i, b_j)``

    with the RBF kernel averaged over the bandwidths ``h``: ``k(x, y) = 1/|H| sum_h
    exp(-|x - y|^2 / (2 h^2))``. ``bandwidths``: one ``h`` or several (a multi-scale kernel);
    ``None``: the median heuristic (:func:`median_bandwidth`). Being unbiased, the estimate can
    be slightly negative when ``P = Q``; it is ~0 then and positive when they differ."""
    a2, b2 = _pair(a, b)
    if len(a2) < 2 or len(b2) < 2:
        raise ShapeError(f"mmd needs at least 2 samples in each set; got {len(a2)} and {len(b2)}.")
    if bandwidths is None:
        hs = [median_bandwidth(a2, b2)]
    else:
        hs = [float(bandwidths)] if np.isscalar(bandwidths) else [float(h) for h in bandwidths]
        if not hs or any(not (h > 0 and math.isfinite(h)) for h in hs):
            raise ConfigError(f"mmd bandwidths must be positive finite numbers; got {bandwidths!r}.")
    x, y = torch.from_numpy(a2), torch.from_numpy(b2)
    n, m = len(x), len(y)

    def kernel_sum(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(u, v).square()
        return sum(torch.exp(-d2 / (2 * h * h)) for h in hs).sum() / len(hs)

    # k(x, x) = 1 on the diagonal: remove it from the within-set sums
    kxx = (kernel_sum(x, x) - n) / (n * (n - 1))
    kyy = (kernel_sum(y, y) - m) / (m * (m - 1))
    kxy = kernel_sum(x, y) / (n * m)
    return float(kxx + kyy - 2 * kxy)


# -------------------------------------------------------------------------------- mode coverage
def mode_coverage(samples: Any, means: Any, std: float | Sequence[float], *, radius: float = 3.0,
                  min_count: int | None = None, weights: Sequence[float] | None = None) -> dict[str, Any]:
    """Mode coverage and quality of ``samples`` ``(N, D)`` drawn for a Gaussian mixture with
    component ``means`` ``(K, D)``, standard deviation ``std`` (one for all, or ``(K,)``) and
    mixture ``weights`` ``(K,)`` (uniform by default).

    Each sample is assigned to its nearest mean; it is *on* that mode when within ``radius *
    std_k`` of it. With ``n_k`` the number of samples on mode k and ``E_k = N w_k`` the count
    the mixture itself would assign to it:

    * ``modes_covered``: the number of modes with ``n_k >= min_count_k``; ``min_count``
      (default: ``max(1, 0.05 E_k)``, 5% of the expected count) — ``coverage`` is that
      number over K;
    * ``high_quality``: the fraction of all samples that are on some mode (precision);
    * ``per_mode_precision[k]``: of the samples assigned to mode k, the fraction on it
      (``nan`` when none is assigned to it);
    * ``per_mode_recall[k]``: ``min(1, n_k / (E_k c))``, the share of mode k's expected mass
      that was reached, where ``c = P(chi^2_D <= radius^2)`` is the mass of a D-dim Gaussian
      within the radius (so a perfect sampler of well-separated modes scores ~1);
    * ``kl_mode_histogram``: ``KL(h || w) = sum_k h_k log(h_k / w_k)`` of the histogram ``h_k
      = n_k / sum_j n_j`` of on-mode samples against the weights (0 for a balanced sampler,
      ``log K`` when all samples sit on one of K uniform modes; ``inf`` when no sample is on
      any mode);
    * ``counts``: the ``n_k``; ``expected``: the ``E_k``.
    """
    from scipy.stats import chi2

    x = _as_2d(samples, "samples")
    mu = _as_2d(means, "means")
    if mu.shape[1] != x.shape[1]:
        raise ShapeError(f"means have {mu.shape[1]} coordinates but samples have {x.shape[1]}.")
    k = len(mu)
    try:
        sd = np.broadcast_to(np.asarray(std, dtype=np.float64), (k,))
    except ValueError:
        sd = None
    if sd is None or not (sd > 0).all():
        raise ConfigError(f"mode_coverage std must be a positive number or one per mode ({k}); got {std!r}.")
    if radius <= 0:
        raise ConfigError(f"mode_coverage radius must be positive; got {radius!r}.")
    w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (k,) or (w < 0).any() or w.sum() <= 0:
        raise ConfigError(f"mode_coverage weights must be {k} non-negative numbers; got {weights!r}.")
    w = w / w.sum()

    n = len(x)
    dist = torch.cdist(torch.from_numpy(x), torch.from_numpy(mu)).numpy()  # (N, K)
    nearest = dist.argmin(axis=1)
    on = dist[np.arange(n), nearest] <= radius * sd[nearest]
    assigned = np.bincount(nearest, minlength=k)
    counts = np.bincount(nearest[on], minlength=k)
    expected = n * w
    thresholds = np.maximum(1.0, 0.05 * expected) if min_count is None else np.full(k, float(min_count))
    covered = counts >= thresholds
    inside = chi2.cdf(radius**2, df=x.shape[1])
    recall = np.minimum(1.0, counts / np.maximum(expected * inside, 1e-300))
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(assigned > 0, counts / np.maximum(assigned, 1), np.nan)
        if counts.sum() == 0:
            kl = math.inf
        else:
            h = counts / counts.sum()
            nz = h > 0
            kl = float(np.sum(h[nz] * np.log(h[nz] / w[nz]))) if (w[nz] > 0).all() else math.inf
    return {
        "modes_covered": int(covered.sum()),
        "coverage": float(covered.mean()),
        "high_quality": float(on.mean()),
        "per_mode_precision": [float(v) for v in precision],
        "per_mode_recall": [float(v) for v in recall],
        "kl_mode_histogram": kl,
        "counts": [int(c) for c in counts],
        "expected": [float(e) for e in expected],
    }


# ------------------------------------------------------------------------------------- digits FD
DIGITS_FD_VERSION = 1  # bump when the network, data split or training recipe changes
_DIGITS_TRAIN = {"epochs": 8, "batch_size": 64, "lr": 3e-3, "weight_decay": 1e-4, "seed": 0, "test_fraction": 0.2}


class DigitFeatureNet(nn.Module):
    """A small CNN for 8x8 digit images; its 64-d penultimate activations are the features of
    the digits FD.

    ``forward(x)`` returns the features ``(B, 64)``; :meth:`logits` the class scores ``(B, 10)``.
    ``x``: ``(B, 1, 8, 8)``, ``(B, 8, 8)`` or ``(B, 64)`` in [-1, 1]; 16x16 images (``(B, 1,
    16, 16)``, ``(B, 16, 16)``, ``(B, 256)``) are average-pooled to 8x8 first. Layers: conv 3x3
    (1 -> 16) + ReLU, conv 3x3 (16 -> 32) + ReLU, 2x2 max-pool, linear 512 -> 64 + ReLU
    (features), linear 64 -> 10. ``num_features`` tells torchmetrics the feature size."""

    num_features = 64

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, self.num_features)
        self.fc2 = nn.Linear(self.num_features, 10)

    @staticmethod
    def to_images(x: torch.Tensor) -> torch.Tensor:
        """Reshape ``x`` to ``(B, 1, 8, 8)`` (average-pooling 16x16 inputs); refuse other sizes."""
        b = x.shape[0]
        per = x[0].numel() if b else 0
        side = {64: 8, 256: 16}.get(per)
        if side is None or (x.dim() == 4 and x.shape[1] != 1):
            raise ShapeError(
                f"DigitFeatureNet takes one-channel 8x8 or 16x16 images ((B, 1, H, W), (B, H, W) or "
                f"(B, H*W)); got shape {tuple(x.shape)}."
            )
        x = x.reshape(b, 1, side, side).float()
        return nn.functional.avg_pool2d(x, 2) if side == 16 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.to_images(x)
        h = torch.relu(self.conv1(h))
        h = nn.functional.max_pool2d(torch.relu(self.conv2(h)), 2)
        return torch.relu(self.fc1(h.flatten(1)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.forward(x))


def load_digits_split() -> dict[str, torch.Tensor]:
    """scikit-learn's bundled digits (1797 images, 8x8, values 0..16) scaled to [-1, 1] as
    ``(N, 1, 8, 8)`` float32 with labels ``(N,)``, split by a fixed permutation (seed 0) into
    ``train_x/train_y`` (1438) and ``test_x/test_y`` (359)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 8.0 - 1.0
    y = torch.as_tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(_DIGITS_TRAIN["seed"]))
    n_test = round(len(x) * _DIGITS_TRAIN["test_fraction"])
    test, train = perm[:n_test], perm[n_test:]
    return {"train_x": x[train], "train_y": y[train], "test_x": x[test], "test_y": y[test]}


def digits_reference(split: str = "train") -> torch.Tensor:
    """The real digits ``(N, 1, 8, 8)`` in [-1, 1] of ``split`` (``train``, ``test`` or ``all``),
    a reference set for :func:`digits_fd`."""
    data = load_digits_split()
    if split == "all":
        return torch.cat([data["train_x"], data["test_x"]])
    if split not in ("train", "test"):
        raise ConfigError(f"digits_reference split must be 'train', 'test' or 'all'; got {split!r}.")
    return data[f"{split}_x"]


def _digits_fd_key() -> str:
    spec = repr((DIGITS_FD_VERSION, sorted(_DIGITS_TRAIN.items()), torch.__version__.split("+")[0]))
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def _train_digit_net() -> tuple[DigitFeatureNet, dict[str, float]]:
    """Train :class:`DigitFeatureNet` on the digits train split, deterministically (seed 0, fixed
    epochs, one thread); returns the net (eval mode) and ``{"test_accuracy", "train_seconds"}``."""
    cfg = _DIGITS_TRAIN
    data = load_digits_split()
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg["seed"])
            net = DigitFeatureNet()
        gen = torch.Generator().manual_seed(cfg["seed"])
        opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        x, y = data["train_x"], data["train_y"]
        net.train()
        with torch.enable_grad():  # also when the net is first asked for under torch.no_grad
            for _ in range(cfg["epochs"]):
                perm = torch.randperm(len(x), generator=gen)
                for i in range(0, len(x), cfg["batch_size"]):
                    idx = perm[i : i + cfg["batch_size"]]
                    loss = nn.functional.cross_entropy(net.logits(x[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        net.eval()
        with torch.no_grad():
            acc = float((net.logits(data["test_x"]).argmax(1) == data["test_y"]).float().mean())
    finally:
        torch.set_num_threads(threads)
    return net, {"test_accuracy": acc, "train_seconds": time.perf_counter() - start}


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    from ..engine.checkpoint import chmod_by_umask

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        chmod_by_umask(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_DIGIT_NET: dict[str, tuple[DigitFeatureNet, dict[str, float]]] = {}
_DIGIT_NET_LOCK = threading.Lock()


def digit_feature_net() -> tuple[DigitFeatureNet, dict[str, float]]:
    """The trained :class:`DigitFeatureNet` (eval mode, no gradients) and its record
    ``{"test_accuracy", "train_seconds", "cached"}``.

    Cached in memory per process and on disk at ``cache_dir() / "digits_fd_<hash>.safetensors"``
    (``<hash>`` covers the network version, training recipe and torch version; the file's
    metadata keeps the test accuracy). A missing or unreadable file is retrained and rewritten
    atomically."""
    from safetensors import safe_open
    from safetensors.torch import save

    from ..data.datasets import cache_dir

    key = _digits_fd_key()
    with _DIGIT_NET_LOCK:
        if key in _DIGIT_NET:
            return _DIGIT_NET[key]
        path = cache_dir() / f"digits_fd_{key}.safetensors"
        net, record = None, None
        if path.is_file():
            try:
                with safe_open(str(path), "pt") as f:
                    state = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open is no dict
                    meta = f.metadata() or {}
                net = DigitFeatureNet()
                net.load_state_dict(state)
                record = {"test_accuracy": float(meta["test_accuracy"]),
                          "train_seconds": float(meta.get("train_seconds", "nan")), "cached": True}
            except Exception:  # noqa: BLE001 - safetensors raises several types; a bad file is retrained below
                net, record = None, None
        if net is None:
            net, rec = _train_digit_net()
            record = {**rec, "cached": False}
            meta = {"test_accuracy": repr(rec["test_accuracy"]), "train_seconds": repr(rec["train_seconds"]),
                    "version": str(DIGITS_FD_VERSION)}
            state = {k: v.contiguous() for k, v in net.state_dict().items()}
            with contextlib.suppress(OSError):  # a read-only cache only costs a retrain next time
                _atomic_write_bytes(path, save(state, metadata=meta))
        net.eval().requires_grad_(False)
        _DIGIT_NET[key] = (net, record)
        return net, record


def digits_fd(samples: Any, reference: Any, *, batch_size: int = 512) -> float:
    """Frechet distance between ``samples`` and ``reference`` in :class:`DigitFeatureNet`
    features: ``|mu_s - mu_r|^2 + Tr(S_s + S_r - 2 (S_s S_r)^(1/2))`` over the 64-d features
    (Heusel et al. 2017, arXiv:1706.08500), by torchmetrics' ``FrechetInceptionDistance`` with
    the trained digit net as its feature extractor.

    ``samples``, ``reference``: ``(N, 1, 8, 8)`` / ``(N, 1, 16, 16)`` images (or ``(N, H, W)``,
    ``(N, H*W)``) in [-1, 1], as :func:`digits_reference` returns them (N >= 2 each). Values are
    clipped to [-1, 1] (a generator's overshoot is not the feature net's business)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    net, _ = digit_feature_net()
    fid = FrechetInceptionDistance(feature=net, reset_real_features=True)
    for data, real in ((reference, True), (samples, False)):
        x = torch.as_tensor(data).detach().to("cpu", torch.float32)
        if x.dim() < 2 or len(x) < 2:
            raise ShapeError(f"digits_fd needs at least 2 images per set; got shape {tuple(x.shape)}.")
        if not torch.isfinite(x).all():
            raise ShapeError("digits_fd got NaN or infinite pixel values.")
        DigitFeatureNet.to_images(x[:1])  # a clear message for a wrong image size
        x = x.clamp(-1.0, 1.0)
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                fid.update(x[i : i + batch_size], real=real)
    return float(fid.compute())


# -------------------------------------------------------------------------------- timing, NFE
def timed_sampling(fn: Callable[[int], Any], n: int, repeats: int = 3, *,
                   count: nn.Module | Sequence[nn.Module] | None = None, nfe: int | None = None) -> dict[str, Any]:
    """Wall time per sample and network evaluations (NFE) of a sampler ``fn(n) -> samples``.

    ``fn`` is called once as a warm-up, then ``repeats`` times; ``seconds_per_sample`` is the
    median wall time of those calls divided by ``n`` (CUDA is synchronised around each call
    when available). NFE is the number of network forward calls one sampling run makes (each
    call denoises the whole batch, so it is also the NFE per sample): counted with forward
    hooks on the module(s) in ``count`` during the warm-up, or given as ``nfe``.

    Returns ``{"seconds_per_sample", "seconds_median", "seconds": [...], "n", "repeats",
    "nfe"}`` (``nfe`` is ``None`` when neither ``count`` nor ``nfe`` is given)."""
    if n < 1 or repeats < 1:
        raise ConfigError(f"timed_sampling needs n >= 1 and repeats >= 1; got n={n!r}, repeats={repeats!r}.")
    modules = [] if count is None else ([count] if isinstance(count, nn.Module) else list(count))
    calls = [0]

    def hook(*_: Any) -> None:
        calls[0] += 1

    handles = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        fn(n)
    finally:
        for h in handles:
            h.remove()
    counted = calls[0] if modules else nfe

    def sync() -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    seconds = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn(n)
        sync()
        seconds.append(time.perf_counter() - start)
    med = statistics.median(seconds)
    return {"seconds_per_sample": med / n, "seconds_median": med, "seconds": seconds, "n": n,
            "repeats": repeats, "nfe": counted}
