"""Datasets: ArrayDataset batching, the built-in factories and their errors."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Subset

from distillery.data import (
    ArrayDataset,
    DataSplits,
    collate_batch,
    digits,
    gaussian_mixture,
    image_folder,
    load_dataset,
    mnist1d,
    npz,
    stratified_split,
)
from distillery.data import mnist_1d as D
from distillery.errors import ConfigError, DataError
from distillery.registry import DATASETS

# --------------------------------------------------------------------------------------
# ArrayDataset and batching
# --------------------------------------------------------------------------------------


def _toy(n: int = 10) -> ArrayDataset:
    x = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    return ArrayDataset(x, torch.arange(n) % 3)


def test_getitem_and_getitems():
    ds = _toy()
    item = ds[4]
    assert torch.equal(item["x"], torch.tensor([12.0, 13.0, 14.0]))
    assert item["y"].item() == 1 and item["index"] == 4
    batch = ds.__getitems__([7, 2, 2])
    assert batch["x"].shape == (3, 3)
    assert torch.equal(batch["x"][:, 0], torch.tensor([21.0, 6.0, 6.0]))
    assert torch.equal(batch["y"], torch.tensor([1, 2, 2]))
    assert batch["index"].dtype == torch.int64 and batch["index"].tolist() == [7, 2, 2]
    assert len(ds) == 10


def test_unlabeled_default_and_dtypes():
    ds = ArrayDataset(np.zeros((4, 2), dtype=np.float64))
    assert ds.x.dtype == torch.float32
    assert ds.y.dtype == torch.int64 and ds.y.tolist() == [-1] * 4
    with pytest.raises(ValueError):
        ArrayDataset(torch.zeros(3, 2), torch.zeros(4))


def test_dataloader_yields_batched_dicts():
    ds = _toy(10)
    loader = DataLoader(ds, batch_size=4, shuffle=True, collate_fn=collate_batch, generator=torch.Generator().manual_seed(0))
    seen = []
    sizes = []
    for batch in loader:
        assert set(batch) == {"x", "y", "index"}
        assert batch["index"].dtype == torch.int64
        assert torch.equal(batch["x"], ds.x[batch["index"]])
        assert torch.equal(batch["y"], ds.y[batch["index"]])
        seen += batch["index"].tolist()
        sizes.append(len(batch["index"]))
    assert sorted(seen) == list(range(10))
    assert sizes == [4, 4, 2]


def test_collate_batch_on_subset_and_concat():
    ds = _toy(10)
    b = next(iter(DataLoader(Subset(ds, [9, 3, 5]), batch_size=3, collate_fn=collate_batch)))
    assert b["index"].tolist() == [9, 3, 5]  # indices into the underlying dataset
    assert torch.equal(b["x"], ds.x[[9, 3, 5]])
    # ConcatDataset has no __getitems__: collate_batch stacks per-sample dicts
    b = next(iter(DataLoader(ConcatDataset([ds, ds]), batch_size=4, collate_fn=collate_batch)))
    assert b["x"].shape == (4, 3) and b["index"].tolist() == [0, 1, 2, 3]
    assert b["index"].dtype == torch.int64 and b["y"].dtype == torch.int64


def test_fingerprint():
    a, b = _toy(), _toy()
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 16
    b.y[0] = 2
    assert a.fingerprint() != b.fingerprint()
    c = _toy()
    c.x[3, 1] += 1e-3
    assert a.fingerprint() != c.fingerprint()


def test_train_with_unlabeled():
    train = ArrayDataset(torch.ones(3, 2), torch.tensor([0, 1, 0]))
    unl = ArrayDataset(torch.zeros(2, 2), None, hidden_y=torch.tensor([1, 1]))
    s = DataSplits(train, train, unl, 2, (2,), "t")
    both = s.train_with_unlabeled()
    assert len(both) == 5
    assert both.y.tolist() == [0, 1, 0, -1, -1]
    assert torch.equal(both.x[3:], torch.zeros(2, 2))
    assert both.hidden_y.tolist() == [0, 1, 0, 1, 1]
    assert DataSplits(train, train, None, 2, (2,), "t").train_with_unlabeled() is train


def test_stratified_split_counts():
    y = np.repeat(np.arange(3), [10, 5, 1])
    tr, te = stratified_split(y, 0.2, seed=0)
    assert np.bincount(y[te], minlength=3).tolist() == [2, 1, 0]
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(16))
    assert np.array_equal(stratified_split(y, 0.2, 0)[1], te)


# --------------------------------------------------------------------------------------
# load_dataset and the registry
# --------------------------------------------------------------------------------------


def test_registered_with_summaries():
    for name in ("digits", "mnist1d", "gaussian_mixture", "image_folder", "npz"):
        assert name in DATASETS
        assert DATASETS.summary(name)


def test_load_dataset_errors():
    with pytest.raises(ConfigError, match="Did you mean 'digits'"):
        load_dataset("digit")
    with pytest.raises(ConfigError, match=r"'tset_fraction'.*Accepted parameters: test_fraction, seed"):
        load_dataset("digits", tset_fraction=0.3)
    with pytest.raises(ConfigError, match="Missing required parameter 'path'"):
        load_dataset("npz")
    with pytest.raises(ConfigError, match="test_fraction"):
        load_dataset("digits", test_fraction=1.5)


# --------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------


def test_digits_split_and_standardisation():
    from sklearn.datasets import load_digits

    s = load_dataset("digits", test_fraction=0.25, seed=0)
    y_all = load_digits().target
    assert s.input_shape == (1, 8, 8) and s.num_classes == 10
    assert s.train.x.shape[1:] == (1, 8, 8)
    assert len(s.train) + len(s.test) == len(y_all) == 1797
    # stratified: round(0.25 * n_c) test samples of each class
    expected = [round(0.25 * n) for n in np.bincount(y_all)]
    assert np.bincount(s.test.y.numpy(), minlength=10).tolist() == expected
    xtr = s.train.x.double()
    assert abs(xtr.mean().item()) < 1e-5 and abs(xtr.std(unbiased=False).item() - 1) < 1e-5
    # the test set uses the train statistics: undoing them gives pixel counts k/16
    raw = (s.test.x.double() * s.info["std"] + s.info["mean"]) * 16
    assert torch.allclose(raw, raw.round(), atol=1e-4)
    assert raw.min() >= -1e-4 and raw.max() <= 16 + 1e-4
    # the multiset of images is the original one
    both = torch.cat([s.train.x, s.test.x]).double() * s.info["std"] + s.info["mean"]
    orig = torch.as_tensor(load_digits().images / 16.0)
    assert torch.allclose(both.sum(0)[0], orig.sum(0), atol=1e-3)


def test_digits_deterministic():
    a, b, c = digits(seed=0), digits(seed=0), digits(seed=1)
    assert a.train.fingerprint() == b.train.fingerprint()
    assert a.train.fingerprint() != c.train.fingerprint()


# --------------------------------------------------------------------------------------
# mnist1d
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILLERY_CACHE", str(d))
        yield d


@pytest.fixture(scope="module")
def mnist_splits(mnist_cache):
    return mnist1d(unlabeled=200)


def test_mnist1d_equals_make_dataset(mnist_splits):
    from mnist1d.data import get_dataset_args, make_dataset

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        ref = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    s = mnist_splits
    assert s.train.x.shape == (4000, 40) and s.test.x.shape == (1000, 40)
    assert s.input_shape == (40,) and s.num_classes == 10
    assert torch.equal(s.train.x, torch.from_numpy(ref["x"].astype(np.float32)))
    assert torch.equal(s.test.x, torch.from_numpy(ref["x_test"].astype(np.float32)))
    assert s.train.y.tolist() == ref["y"].tolist() and s.test.y.tolist() == ref["y_test"].tolist()
    # float64 normalisation from the raw samples equals make_dataset's
    xs, _, _ = D._cached_raw(D._cache_name("canonical", 42), lambda: pytest.fail("should be cached"))
    xn = (xs - xs.mean()) / xs.std()
    assert np.allclose(xn[:4000], ref["x"], rtol=0, atol=1e-12)
    assert np.allclose(xn[4000:], ref["x_test"], rtol=0, atol=1e-12)


def test_mnist1d_unlabeled(mnist_splits):
    s = mnist_splits
    u = s.unlabeled
    assert u is not None and u.x.shape == (200, 40)
    assert u.y.tolist() == [-1] * 200
    assert np.bincount(u.hidden_y.numpy(), minlength=10).tolist() == [20] * 10
    # normalised with the canonical statistics
    raw, labels, _ = D._generate_mnist1d_extra(200, 1)
    assert np.array_equal(labels, u.hidden_y.numpy())
    assert torch.allclose(u.x, torch.from_numpy(((raw - s.info["mean"]) / s.info["std"]).astype(np.float32)))
    assert abs(u.x.mean().item()) < 0.2 and abs(u.x.std().item() - 1) < 0.2
    # new samples, not copies of labeled ones
    d = torch.cdist(u.x, s.train.x)
    assert d.min() > 1e-3
    both = s.train_with_unlabeled()
    assert len(both) == 4200 and (both.y == -1).sum() == 200


def test_mnist1d_no_unlabeled(mnist_cache, mnist_splits):
    s = mnist1d()
    assert s.unlabeled is None
    assert s.train.fingerprint() == mnist_splits.train.fingerprint()


def test_mnist1d_cache_hit_and_atomic(mnist_cache, mnist_splits, monkeypatch):
    files = sorted(p.name for p in (mnist_cache / "mnist1d").iterdir())
    assert any(f.startswith("mnist1d-canonical-seed42-") for f in files)
    assert not any(f.endswith(".tmp") for f in files)

    def boom(*a, **k):
        raise AssertionError("regenerated despite the cache")

    monkeypatch.setattr(D, "_generate_mnist1d_canonical", boom)
    monkeypatch.setattr(D, "_generate_mnist1d_extra", boom)
    monkeypatch.setattr(D, "_mnist1d_modules", boom)  # a hit does not even import mnist1d
    t = time.perf_counter()
    again = mnist1d(unlabeled=200)
    assert time.perf_counter() - t < 2.0
    for a, b in ((again.train, mnist_splits.train), (again.test, mnist_splits.test), (again.unlabeled, mnist_splits.unlabeled)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_mnist1d_leaves_global_rng_alone(mnist_cache, mnist_splits):
    np.random.seed(1234)
    random.seed(99)
    s = mnist1d(unlabeled=30, unlabeled_seed=5)  # a cache miss for the unlabeled part
    after_np, after_py = np.random.rand(), random.random()
    np.random.seed(1234)
    random.seed(99)
    assert np.random.rand() == after_np and random.random() == after_py
    assert len(s.unlabeled) == 30


def test_mnist1d_corrupt_cache_regenerated(mnist_cache, mnist_splits):
    first = mnist1d(unlabeled=20, unlabeled_seed=3)
    path = next((mnist_cache / "mnist1d").glob("mnist1d-extra-seed3-n20-*.npz"))
    path.write_bytes(b"this is not a zip file")
    with pytest.warns(RuntimeWarning, match="corrupt"):
        second = mnist1d(unlabeled=20, unlabeled_seed=3)
    assert torch.equal(first.unlabeled.x, second.unlabeled.x)
    # the rewritten file is good again: no warning now
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        third = mnist1d(unlabeled=20, unlabeled_seed=3)
    assert torch.equal(third.unlabeled.x, first.unlabeled.x)


def test_mnist1d_bad_params():
    with pytest.raises(ConfigError, match="unlabeled_seed"):
        mnist1d(unlabeled=10, seed=42, unlabeled_seed=42)
    with pytest.raises(ConfigError, match="unlabeled"):
        mnist1d(unlabeled=-1)


# --------------------------------------------------------------------------------------
# gaussian_mixture
# --------------------------------------------------------------------------------------


def test_gaussian_mixture():
    s = gaussian_mixture(num_classes=3, dim=5, n_train=300, n_test=150, n_unlabeled=60, separation=10.0, noise=0.5, seed=3)
    assert s.train.x.shape == (300, 5) and s.test.x.shape == (150, 5) and s.unlabeled.x.shape == (60, 5)
    assert s.input_shape == (5,) and s.num_classes == 3
    assert np.bincount(s.train.y.numpy()).tolist() == [100] * 3
    assert s.unlabeled.y.tolist() == [-1] * 60
    means = np.asarray(s.info["means"])
    for c in range(3):
        emp = s.train.x[s.train.y == c].double().mean(0).numpy()
        assert np.abs(emp - means[c]).max() < 0.5  # 100 samples, noise 0.5
    again = gaussian_mixture(num_classes=3, dim=5, n_train=300, n_test=150, n_unlabeled=60, separation=10.0, noise=0.5, seed=3)
    assert again.train.fingerprint() == s.train.fingerprint()
    # the test split does not depend on n_train
    other = gaussian_mixture(num_classes=3, dim=5, n_train=30, n_test=150, separation=10.0, noise=0.5, seed=3)
    assert other.test.fingerprint() == s.test.fingerprint()
    assert gaussian_mixture(seed=4).train.fingerprint() != gaussian_mixture(seed=5).train.fingerprint()


# --------------------------------------------------------------------------------------
# image_folder
# --------------------------------------------------------------------------------------


def _write_images(root, classes, n, size=(6, 5), mode="L", seed=0):
    rng = np.random.default_rng(seed)
    pixels = {}
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = size if mode == "L" else (*size, 3)
            a = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(a, mode=mode).save(root / c / f"img{i}.png")
            pixels[(c, i)] = a
    return pixels


def test_image_folder_pixels_and_class_order(tmp_path):
    root = tmp_path / "imgs"
    pixels = _write_images(root, ["zebra", "ant"], 3, mode="L")
    test_root = tmp_path / "test"
    test_pixels = _write_images(test_root, ["zebra"], 2, mode="L", seed=1)
    s = image_folder(root, test_path=test_root, grayscale=True)
    assert s.class_names == ("ant", "zebra") and s.num_classes == 2
    assert s.input_shape == (1, 6, 5)
    assert s.train.y.tolist() == [0, 0, 0, 1, 1, 1]
    back = (s.train.x * 255).round().to(torch.uint8).numpy()
    order = [("ant", 0), ("ant", 1), ("ant", 2), ("zebra", 0), ("zebra", 1), ("zebra", 2)]
    for k, key in enumerate(order):
        assert np.array_equal(back[k, 0], pixels[key])
    assert s.test.y.tolist() == [1, 1]
    assert np.array_equal((s.test.x[1, 0] * 255).round().to(torch.uint8).numpy(), test_pixels[("zebra", 1)])
    assert 0.0 <= s.train.x.min() and s.train.x.max() <= 1.0


def test_image_folder_rgb_split_and_resize(tmp_path):
    pixels = _write_images(tmp_path, ["a", "b"], 5, size=(4, 4), mode="RGB")
    s = image_folder(tmp_path, test_fraction=0.2, seed=0)
    assert s.input_shape == (3, 4, 4)
    assert len(s.train) == 8 and np.bincount(s.test.y.numpy()).tolist() == [1, 1]
    x0 = (s.train.x[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert any(np.array_equal(x0, p) for p in pixels.values())
    r = image_folder(tmp_path, size=(2, 3), test_fraction=0.2)
    assert r.input_shape == (3, 2, 3)
    g = image_folder(tmp_path, size=8, grayscale=True, test_fraction=0.2)
    assert g.input_shape == (1, 8, 8)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        image_folder(tmp_path / "nope")
    (tmp_path / "empty_root").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        image_folder(tmp_path / "empty_root")
    root = tmp_path / "r"
    _write_images(root, ["cat"], 2)
    (root / "dog").mkdir()
    (root / "dog" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=r"class folder .*dog has no images"):
        image_folder(root)
    _write_images(root, ["dog"], 1, size=(7, 7))
    with pytest.raises(DataError, match=r"differ in size.*img0\.png.*dog.img0\.png") as e:
        image_folder(root)
    assert "size=" in str(e.value)
    assert image_folder(root, size=5).input_shape == (1, 5, 5)  # grey PNGs: one channel, detected
    (root / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"broken\.png"):
        image_folder(root, size=5)
    other = tmp_path / "t"
    _write_images(other, ["cow"], 1)
    good = tmp_path / "g"
    _write_images(good, ["cat"], 2)
    with pytest.raises(DataError, match="cow"):
        image_folder(good, test_path=other)
    with pytest.raises(ConfigError, match="size"):
        image_folder(good, size=(1, 2, 3))


# --------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------


def test_npz_roundtrip_with_unlabeled(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 2, 3))
    y = np.repeat(np.arange(5), 10)
    y[::10] = -1  # 5 unlabeled
    np.savez(tmp_path / "d.npz", x=x, y=y)
    s = load_dataset("npz", path=str(tmp_path / "d.npz"), test_fraction=0.25)
    assert s.input_shape == (2, 3) and s.num_classes == 5
    assert len(s.unlabeled) == 5 and len(s.train) + len(s.test) == 45
    assert np.bincount(s.test.y.numpy()).tolist() == [2] * 5  # round(0.25 * 9)
    assert torch.allclose(s.unlabeled.x, torch.from_numpy(x[::10]).float())
    # explicit test arrays in the same file, and integer-valued float labels
    np.savez(tmp_path / "e.npz", x=x[:10], y=np.arange(10.0) % 2, x_test=x[10:14], y_test=np.array([0, 1, 1, 0]))
    e = npz(tmp_path / "e.npz")
    assert len(e.train) == 10 and e.test.y.tolist() == [0, 1, 1, 0] and e.num_classes == 2
    # a separate test file
    np.savez(tmp_path / "t.npz", x=x[:4], y=np.array([4, 0, 0, 1]))
    t = npz(tmp_path / "e.npz", test_path=tmp_path / "t.npz")
    assert t.test.y.tolist() == [4, 0, 0, 1] and t.num_classes == 5


def test_npz_errors(tmp_path):
    with pytest.raises(DataError, match=r"missing\.npz does not exist"):
        npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "k.npz", features=np.zeros((3, 2)), y=np.zeros(3, dtype=int))
    with pytest.raises(DataError, match=r"lacks the array\(s\) 'x'.*'features', 'y'"):
        npz(tmp_path / "k.npz")
    np.savez(tmp_path / "l.npz", x=np.zeros((3, 2)), y=np.zeros(4, dtype=int))
    with pytest.raises(DataError, match="3 samples but 'y' has 4"):
        npz(tmp_path / "l.npz")
    np.savez(tmp_path / "f.npz", x=np.zeros((3, 2)), y=np.array([0.0, 0.5, 1.0]))
    with pytest.raises(DataError, match="must be integers"):
        npz(tmp_path / "f.npz")
    np.savez(tmp_path / "s.npz", x=np.zeros((3, 2)), y=np.array(["a", "b", "c"]))
    with pytest.raises(DataError, match="must be integers"):
        npz(tmp_path / "s.npz")
    (tmp_path / "junk.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="junk.npz"):
        npz(tmp_path / "junk.npz")


# --------------------------------------------------------------------------------------
# image_folder: the number of channels is detected (issue 10)
# --------------------------------------------------------------------------------------


def _save(path, array, mode, palette=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)  # the mode follows the dtype and shape: bool "1", uint16 "I;16", [H, W, 2] "LA"
    if mode == "P":
        img = img.convert("P")
    assert img.mode == mode
    if palette is not None:
        img.putpalette(palette)
    img.save(path)
    return img


def test_image_folder_detects_grey_and_colour_files(tmp_path):
    rng = np.random.default_rng(0)
    grey = {c: rng.integers(0, 256, size=(4, 5), dtype=np.uint8) for c in ("a", "b")}
    for c, a in grey.items():
        for i in range(2):
            _save(tmp_path / "grey" / c / f"{i}.png", a, "L")
    s = image_folder(tmp_path / "grey", test_fraction=0.5)
    assert s.input_shape == (1, 4, 5) and s.train.x.shape[1] == 1 and s.test.x.shape[1] == 1
    assert np.array_equal((s.train.x[0, 0] * 255).round().to(torch.uint8).numpy(), grey["a"])
    # explicit true / false still force the channels
    assert image_folder(tmp_path / "grey", grayscale=False, test_fraction=0.5).input_shape == (3, 4, 5)
    rgb = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    for c in ("a", "b"):
        for i in range(2):
            _save(tmp_path / "rgb" / c / f"{i}.png", rgb, "RGB")
    assert image_folder(tmp_path / "rgb", test_fraction=0.5).input_shape == (3, 4, 5)
    assert image_folder(tmp_path / "rgb", grayscale=True, test_fraction=0.5).input_shape == (1, 4, 5)
    # a mixed folder loads as RGB, the grey images with three equal channels
    _save(tmp_path / "mixed" / "a" / "0.png", grey["a"], "L")
    _save(tmp_path / "mixed" / "b" / "0.png", rgb, "RGB")
    m = image_folder(tmp_path / "mixed", test_path=tmp_path / "mixed")
    assert m.input_shape == (3, 4, 5)
    back = (m.train.x[0] * 255).round().to(torch.uint8).numpy()
    assert all(np.array_equal(back[k], grey["a"]) for k in range(3))
    # grey train images with a colour test folder: both RGB, so that the shapes agree
    g = image_folder(tmp_path / "grey", test_path=tmp_path / "rgb")
    assert g.input_shape == (3, 4, 5) and g.test.x.shape[1:] == (3, 4, 5)


def test_image_folder_single_channel_modes_and_palettes(tmp_path):
    a = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    _save(tmp_path / "bw" / "a" / "0.png", a > 100, "1")
    _save(tmp_path / "bw" / "b" / "0.png", np.stack([a, 255 - a], -1), "LA")
    _save(tmp_path / "bw" / "c" / "0.png", a.astype(np.uint16) * 4, "I;16")
    assert image_folder(tmp_path / "bw", test_path=tmp_path / "bw").input_shape == (1, 4, 5)
    # a palette image whose colours are grey is single-channel; with a colour in use it is RGB
    grey_palette = [v for i in range(256) for v in (i, i, i)]
    _save(tmp_path / "pal" / "a" / "0.png", a, "P", grey_palette)
    p = image_folder(tmp_path / "pal", test_path=tmp_path / "pal")
    assert p.input_shape == (1, 4, 5)
    assert np.array_equal((p.train.x[0, 0] * 255).round().to(torch.uint8).numpy(), a)
    colour_palette = list(grey_palette)
    colour_palette[3 * 12: 3 * 12 + 3] = [255, 0, 0]  # a == 12 occurs at pixel (0, 1)
    _save(tmp_path / "pal" / "b" / "0.png", a, "P", colour_palette)
    assert image_folder(tmp_path / "pal", test_path=tmp_path / "pal").input_shape == (3, 4, 5)
    # an unused colour entry does not make a grey palette image RGB
    unused = list(grey_palette)
    unused[3 * 255: 3 * 255 + 3] = [0, 255, 0]
    _save(tmp_path / "pal2" / "a" / "0.png", a, "P", unused)
    assert image_folder(tmp_path / "pal2", test_path=tmp_path / "pal2").input_shape == (1, 4, 5)


def test_general_datasets_document_every_parameter():
    from distillery.config.describe import docstring_args
    from distillery.config.signatures import keyword_names

    for name in ("digits", "mnist1d", "gaussian_mixture", "image_folder", "npz"):
        fn = DATASETS.get(name)
        meanings = docstring_args(fn.__doc__)
        names, _ = keyword_names(fn)
        assert names and all(meanings.get(n) for n in names), (name, set(names) - set(meanings))


def test_generated_data_cache_files_follow_the_umask(tmp_path):
    """Issue 10, item 6: files written atomically respect the umask (the data cache may be shared)."""
    import os
    import stat

    import numpy as np

    from distillery.data.datasets import _atomic_savez

    old = os.umask(0o022)
    try:
        _atomic_savez(tmp_path / "x.npz", a=np.zeros(3))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.npz").stat().st_mode) == 0o644
