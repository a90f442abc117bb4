"""A data source cut to some of its classes, and a two-class split's ROC/PR curves and val-chosen threshold."""
import json

import numpy as np
import pytest

from edgeres.data import DataConfig, load_data
from edgeres.errors import UserInputError
from edgeres.tasks import get_task
from edgeres.tasks.classify_metrics import choose_threshold, classification_metrics, operating_point, threshold_on_val


def test_class_subset_relabels_and_keeps_only_named_classes():
    whole = load_data(DataConfig("shapes", img_size=16, shapes_per_class=6))
    cut = load_data(DataConfig("shapes", img_size=16, shapes_per_class=6, classes=("ring", "round")))
    assert cut.class_names == ["ring", "round"]
    for split in ("train", "val", "test"):
        assert set(cut.labels(split)) == {0, 1}
    assert sum(len(cut.labels(s)) for s in ("train", "val", "test")) == 12
    # the subset's images are the whole set's images of those classes, under their new labels
    ring = whole.class_names.index("ring")
    x, y = next(cut.batches("test", 64))
    wx, wy = next(whole.batches("test", 64))
    assert len(wx[wy == ring]) >= 1 and (y == 0).sum() >= 1
    assert DataConfig.from_dict(json.loads(json.dumps(cut.config.to_dict()))) == cut.config


@pytest.mark.parametrize("classes", [("ring", "square"), ("ring",), ("ring", "ring")])
def test_class_subset_refuses_unknown_single_or_repeated_classes(classes):
    with pytest.raises(UserInputError, match="classes"):
        load_data(DataConfig("shapes", img_size=16, shapes_per_class=6, classes=classes))


def test_class_subset_of_a_folder_keeps_its_given_splits(tmp_path):
    from PIL import Image

    for split in ("train", "val", "test"):
        for name in ("a", "b", "c"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (12, 12), (i * 90, 20, 40)).save(tmp_path / split / name / f"{i}.png")
    cut = load_data(DataConfig(str(tmp_path), img_size=16, classes=("c", "a")))
    assert cut.class_names == ["c", "a"]
    assert {s: len(cut.labels(s)) for s in ("train", "val", "test")} == {"train": 4, "val": 4, "test": 4}


def _split(rng, n, separation):
    y = rng.integers(0, 2, n)
    score = np.clip(0.5 + separation * (y - 0.5) + rng.normal(0, 0.2, n), 0, 1)
    return y, np.stack([1 - score, score], axis=1)


def test_binary_curves_and_the_threshold_chosen_on_val_applied_to_test():
    rng = np.random.default_rng(0)
    metrics = {s: classification_metrics(*_split(rng, 200, 0.5), ["benign", "malignant"]) for s in ("test", "val")}
    binary = metrics["test"]["binary"]
    assert binary["positive"] == "malignant" and 0.8 < binary["roc_auc"] <= 1 and 0.8 < binary["pr_auc"] <= 1
    assert binary["roc_auc"] == pytest.approx(metrics["test"]["auc"])
    related = get_task("classification").relate_splits(metrics)
    point = related["test"]["binary"]["operating_point"]
    assert point["chosen_on"] == "val" and point["threshold"] == choose_threshold(metrics["val"]["binary"])
    # the operating point read off the curve equals counting the test scores directly
    y, probs = _split(np.random.default_rng(0), 200, 0.5)  # the same draw as the test split above
    called = probs[:, 1] >= point["threshold"]
    assert point["sensitivity"] == pytest.approx(called[y == 1].mean())
    assert point["specificity"] == pytest.approx((~called[y == 0]).mean())
    assert point["accuracy"] == pytest.approx((called == (y == 1)).mean())
    json.dumps(related)  # no inf in the thresholds


def test_youden_threshold_separates_perfectly_separable_scores():
    y = np.array([0, 0, 0, 1, 1, 1])
    probs = np.stack([1 - np.array([.1, .2, .3, .7, .8, .9]), [.1, .2, .3, .7, .8, .9]], axis=1)
    curves = classification_metrics(y, probs, ["n", "p"])["binary"]
    t = choose_threshold(curves)
    assert 0.3 < t <= 0.7
    assert operating_point(curves, t) == {"threshold": t, "sensitivity": 1.0, "specificity": 1.0, "accuracy": 1.0}


def test_multiclass_has_no_binary_curves_and_no_val_threshold():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), 30)
    m = {"test": classification_metrics(rng.integers(0, 3, 30), probs, ["a", "b", "c"])}
    assert "binary" not in m["test"] and threshold_on_val(m) == m


def test_binary_plots_are_written(tmp_path):
    rng = np.random.default_rng(2)
    metrics = threshold_on_val({s: classification_metrics(*_split(rng, 60, 0.6), ["n", "p"]) for s in ("test", "val")})
    written = get_task("classification").write_plots(metrics, tmp_path, ["n", "p"])
    assert {p.name for p in written} >= {"roc_pr_test.png", "roc_pr_val.png"}
    assert all(p.stat().st_size > 1000 for p in written)


def test_classes_pick_folders_and_leave_the_others_unread(tmp_path):
    from PIL import Image

    for name, count in (("a", 4), ("b", 4), ("c", 4)):
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.new("L", (10, 10), i * 60).save(tmp_path / name / f"{i}.png")
    (tmp_path / "notes").mkdir()  # a folder of no images: an error unless classes leave it out
    (tmp_path / "notes" / "readme.txt").write_text("x")
    (tmp_path / "c" / "broken.png").write_bytes(b"not a png")  # c is not read at all
    with pytest.raises(UserInputError, match="notes"):
        load_data(DataConfig(str(tmp_path), img_size=16))
    cut = load_data(DataConfig(str(tmp_path), img_size=16, classes=("b", "a"), split=(0.5, 0.25, 0.25)))
    assert cut.class_names == ["b", "a"] and sum(len(cut.labels(s)) for s in ("train", "val", "test")) == 8
    with pytest.raises(UserInputError, match=r"\['z'\] are not class folders"):
        load_data(DataConfig(str(tmp_path), img_size=16, classes=("a", "z")))
