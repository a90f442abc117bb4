import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from edgeres.data import DataConfig, class_weights, load_data, make_sampler
from edgeres.errors import UserInputError


def _png(path, rgb=False, size=(12, 10), value=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    # crc32 of the path's tail, not hash(): str hashes are salted per process, and tmp_path varies per run.
    rng = np.random.default_rng(zlib.crc32("/".join(path.parts[-3:]).encode()))
    shape = (size[1], size[0], 3) if rgb else (size[1], size[0])
    pixels = rng.integers(0, 255, shape, dtype=np.uint8) if value is None else np.full(shape, value, np.uint8)
    Image.fromarray(pixels).save(path)


def _folder(root, classes=("cat", "dog"), per_class=10, rgb=False):
    for c in classes:
        for i in range(per_class):
            _png(root / c / f"{i}.png", rgb=rgb)
    return root


def test_digits_sizes_and_stratified_split():
    b = load_data(DataConfig("digits", img_size=16))
    sizes = {s: len(b.indices[s]) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797 and 355 <= sizes["test"] <= 362 and 355 <= sizes["val"] <= 362
    assert b.in_chans == 1 and b.class_names == [str(i) for i in range(10)]
    for split in ("train", "val", "test"):
        counts = np.bincount(b.labels(split), minlength=10)
        assert counts.min() > 0.8 * counts.mean(), "every class in every split, in proportion"
    assert not set(b.indices["train"]) & set(b.indices["test"])


def test_same_config_same_split_and_tensors():
    a, b = (load_data(DataConfig("digits", img_size=16, seed=3)) for _ in range(2))
    for split in ("train", "val", "test"):
        assert np.array_equal(a.indices[split], b.indices[split])
    xa, _ = next(a.batches("test", 8))
    xb, _ = next(b.batches("test", 8))
    assert np.array_equal(xa, xb)
    other = load_data(DataConfig("digits", img_size=16, seed=4))
    assert not np.array_equal(other.indices["test"], a.indices["test"])


def test_batches_are_normalised_float32_nchw():
    b = load_data(DataConfig("digits", img_size=16))
    batches = list(b.batches("val", 100, limit=250))
    assert [len(y) for _, y in batches] == [100, 100, 50]
    x, y = batches[0]
    assert x.dtype == np.float32 and x.shape == (100, 1, 16, 16) and y.dtype == np.int64
    assert abs(float(x.mean())) < 0.3, "dataset statistics centre the data"


def test_augmentation_only_on_train():
    b = load_data(DataConfig("digits", img_size=16))
    train = b.dataset("train")
    torch.manual_seed(0)
    first = train[0][0]
    torch.manual_seed(1)
    assert not torch.equal(first, train[0][0]), "train items are augmented"
    test = b.dataset("test")
    assert torch.equal(test[0][0], test[0][0])
    assert b.hflip is False, "a mirrored digit is not the same digit"


def test_shapes_deterministic_and_rgb():
    cfg = DataConfig("shapes", img_size=24, shapes_per_class=6)
    a, b = load_data(cfg), load_data(cfg)
    assert a.class_names == b.class_names and len(a.class_names) >= 4 and a.in_chans == 3
    assert np.array_equal(next(a.batches("train", 5))[0], next(b.batches("train", 5))[0])
    x, _ = next(a.batches("train", 5))
    assert x.shape == (5, 3, 24, 24)
    assert sum(len(v) for v in a.indices.values()) == 6 * len(a.class_names)


def test_folder_auto_split_grayscale(tmp_path):
    root = _folder(tmp_path / "imgs", per_class=10)
    b = load_data(DataConfig(str(root), img_size=16))
    assert b.class_names == ["cat", "dog"] and b.in_chans == 1
    assert {s: len(b.indices[s]) for s in ("train", "val", "test")} == {"train": 16, "val": 2, "test": 2}
    assert next(b.batches("test", 4))[0].shape == (2, 1, 16, 16)


def test_folder_rgb_and_channel_override(tmp_path):
    root = _folder(tmp_path / "imgs", per_class=10, rgb=True)
    assert load_data(DataConfig(str(root), img_size=16)).in_chans == 3
    gray = load_data(DataConfig(str(root), img_size=16, in_chans=1))
    assert next(gray.batches("train", 2))[0].shape[1] == 1


def test_folder_given_splits(tmp_path):
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        _folder(tmp_path / "ds" / split, per_class=n)
    b = load_data(DataConfig(str(tmp_path / "ds"), img_size=16))
    assert {s: len(b.indices[s]) for s in ("train", "val", "test")} == {"train": 12, "val": 4, "test": 6}


@pytest.mark.parametrize("make,match", [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "no class subfolders"),
    (lambda root: _folder(root, classes=("only",)), "single class"),
    (lambda root: (_folder(root, classes=("a",)), (root / "b").mkdir()), r"hold no images"),
    (lambda root: _folder(root, per_class=2), "at least 3 images"),
])
def test_folder_errors(tmp_path, make, match):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(UserInputError, match=match):
        load_data(DataConfig(str(root), img_size=16))


def test_split_missing_a_class_is_named(tmp_path):
    _folder(tmp_path / "ds" / "train", per_class=4)
    _folder(tmp_path / "ds" / "val", per_class=2)
    _folder(tmp_path / "ds" / "test", classes=("cat",), per_class=2)
    with pytest.raises(UserInputError, match="lacks class folder"):
        load_data(DataConfig(str(tmp_path / "ds"), img_size=16))


def test_unreadable_image_named_or_skipped(tmp_path):
    root = _folder(tmp_path / "imgs", per_class=10)
    bad = root / "dog" / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UserInputError, match="broken.png.*--skip-bad"):
        load_data(DataConfig(str(root), img_size=16))
    b = load_data(DataConfig(str(root), img_size=16, skip_bad=True))
    assert b.skipped == [str(bad)]
    assert sum(len(v) for v in b.indices.values()) == 20


@pytest.mark.parametrize("kwargs,match", [
    (dict(img_size=2), "img_size"), (dict(in_chans=2), "in_chans"), (dict(split=(0.5, 0.5)), "three"),
    (dict(split=(0.9, 0.2, 0.1)), "summing to 1"), (dict(normalize="zscore"), "normalize"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(UserInputError, match=match):
        DataConfig("digits", **kwargs)


def test_unknown_builtin_name_lists_builtins():
    with pytest.raises(UserInputError, match="digits, shapes"):
        load_data(DataConfig("mnist"))


def test_config_round_trip():
    cfg = DataConfig("shapes", img_size=40, split=(0.7, 0.2, 0.1), seed=5, hflip=False)
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(UserInputError, match="unknown data field"):
        DataConfig.from_dict({**cfg.to_dict(), "colour": "red"})


def test_class_weights_and_sampler_balance():
    labels = np.array([0] * 90 + [1] * 10)
    w = class_weights(labels, 2)
    assert torch.isclose(w.mean(), torch.tensor(1.0)) and w[1] / w[0] == pytest.approx(9.0)
    drawn = np.asarray(list(make_sampler(labels, 2, seed=0)))
    share = (labels[drawn] == 1).mean()
    assert 0.35 < share < 0.65, "the sampler draws the rare class about half the time"


def test_too_few_images_names_the_class_and_count(tmp_path):
    root = tmp_path / "imgs"
    _folder(root, classes=("cat",), per_class=5)
    _folder(root, classes=("dog",), per_class=2)
    with pytest.raises(UserInputError, match=r"class 'dog' has 2 image\(s\).*at least 3 images per class"):
        load_data(DataConfig(str(root), img_size=16))


def test_missing_val_folder_is_carved_from_train(tmp_path):
    _folder(tmp_path / "ds" / "train", per_class=9)
    _folder(tmp_path / "ds" / "test", per_class=2)
    b = load_data(DataConfig(str(tmp_path / "ds"), img_size=16))
    sizes = {s: len(b.indices[s]) for s in ("train", "val", "test")}
    assert sizes == {"train": 16, "val": 2, "test": 4}, "val takes 0.1/0.9 of train per class; test is as given"
    assert set(b.labels("val")) == {0, 1}
    assert not set(b.indices["val"]) & set(b.indices["train"])


def test_given_layout_errors(tmp_path):
    _folder(tmp_path / "only" / "train", per_class=4)
    with pytest.raises(UserInputError, match="neither val/ nor test/"):
        load_data(DataConfig(str(tmp_path / "only"), img_size=16))
    for split in ("train", "val", "test"):
        _folder(tmp_path / "full" / split, per_class=3)
    with pytest.raises(UserInputError, match="drop --split"):
        load_data(DataConfig(str(tmp_path / "full"), img_size=16, split=(0.6, 0.2, 0.2)))
    (tmp_path / "full" / "val" / "bird").mkdir()
    with pytest.raises(UserInputError, match=r"val has class folder\(s\) \['bird'\] that train/ lacks"):
        load_data(DataConfig(str(tmp_path / "full"), img_size=16))


def test_hidden_folders_and_files_are_ignored(tmp_path):
    root = _folder(tmp_path / "imgs", per_class=3)
    (root / ".ipynb_checkpoints").mkdir()
    (root / "cat" / "._0.png").write_bytes(b"macOS metadata")
    b = load_data(DataConfig(str(root), img_size=16))
    assert b.class_names == ["cat", "dog"] and b.skipped == []


def test_truncated_jpeg_is_caught_at_load(tmp_path):
    root = _folder(tmp_path / "imgs", per_class=3, rgb=True)
    photo = root / "cat" / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(photo)
    photo.write_bytes(photo.read_bytes()[: photo.stat().st_size // 2])
    with pytest.raises(UserInputError, match="photo.jpg"):
        load_data(DataConfig(str(root), img_size=16))
    assert load_data(DataConfig(str(root), img_size=16, skip_bad=True)).skipped == [str(photo)]


def test_normalisation_modes():
    digits = load_data(DataConfig("digits", img_size=8))
    x = np.concatenate([x for x, _ in digits.batches("train", 512)])
    assert abs(x.mean()) < 1e-3 and abs(x.std() - 1) < 1e-3, "auto on grey data: train-split statistics"
    shapes = DataConfig("shapes", img_size=16, shapes_per_class=3)
    assert load_data(shapes).mean == (0.485, 0.456, 0.406), "auto on RGB data: ImageNet statistics"
    own = load_data(DataConfig("shapes", img_size=16, shapes_per_class=3, normalize="dataset"))
    assert len(own.mean) == 3 and own.mean != (0.485, 0.456, 0.406)
    assert load_data(DataConfig("digits", img_size=8, normalize="imagenet")).mean == (0.449,)


def test_augment_switches():
    b = load_data(DataConfig("digits", img_size=16, augment=False))
    train = b.dataset("train")
    assert torch.equal(train[0][0], train[0][0]), "augment=False: train is not augmented"
    val = b.dataset("val", augment=True)
    plain = b.dataset("val", augment=False)[3][0]
    augmented = torch.stack([val[3][0] for _ in range(4)])
    assert not torch.equal(augmented[0], augmented[1])
    corr = np.corrcoef(plain.flatten(), augmented.mean(0).flatten())[0, 1]
    assert corr > 0.6, "augmentation is mild: the digit stays recognisable"
    assert load_data(DataConfig("shapes", img_size=16, shapes_per_class=3)).hflip is True


def test_dataset_items_match_batches_and_collate():
    b = load_data(DataConfig("shapes", img_size=16, shapes_per_class=4))
    x, y = next(b.batches("val", 3))
    ds = b.dataset("val")
    assert np.array_equal(x[1], ds[1][0].numpy()) and y[1] == ds[1][1]
    assert np.array_equal(b.labels("val"), [ds[i][1] for i in range(len(ds))])
    xb, yb = next(iter(torch.utils.data.DataLoader(b.dataset("train"), batch_size=4)))
    assert xb.shape == (4, 3, 16, 16) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    with pytest.raises(UserInputError, match="unknown split"):
        b.dataset("validation")


def test_shapes_seed_and_balance():
    a = load_data(DataConfig("shapes", img_size=16, shapes_per_class=5))
    b = load_data(DataConfig("shapes", img_size=16, shapes_per_class=5, seed=1))
    assert not np.array_equal(a.dataset("train", augment=False)[0][0], b.dataset("train", augment=False)[0][0])
    for split in ("train", "val", "test"):
        assert set(a.labels(split)) == set(range(len(a.class_names))), "every class in every split"


@pytest.mark.parametrize("kwargs,match", [
    (dict(img_size=True), "img_size"), (dict(img_size=32.0), "img_size"), (dict(seed=-1), "seed"),
    (dict(augment="yes"), "augment"), (dict(hflip=1), "hflip"), (dict(in_chans=True), "in_chans"),
    (dict(shapes_per_class=2), "shapes_per_class"), (dict(split=(0.8, 0.2, 0.0)), "between 0 and 1"),
])
def test_config_validation_types(kwargs, match):
    with pytest.raises(UserInputError, match=match):
        DataConfig("digits", **kwargs)


def test_config_from_dict_errors_and_paths(tmp_path):
    with pytest.raises(UserInputError, match="lacks 'source'"):
        DataConfig.from_dict({"img_size": 32})
    with pytest.raises(UserInputError, match="mapping"):
        DataConfig.from_dict(["digits"])
    assert DataConfig(tmp_path).source == str(tmp_path)
    assert DataConfig.from_dict({"source": "digits", "split": [0.5, 0.25, 0.25]}).split == (0.5, 0.25, 0.25)


def test_sampler_is_seeded_and_labels_checked():
    labels = np.array([0] * 30 + [1] * 5 + [2] * 5)
    assert list(make_sampler(labels, 3, seed=7)) == list(make_sampler(labels, 3, seed=7))
    assert class_weights(np.array([0, 0, 2]), 3)[1] == 0, "a class with no examples weighs nothing"
    with pytest.raises(UserInputError, match="labels must lie in"):
        class_weights(np.array([0, 3]), 3)
