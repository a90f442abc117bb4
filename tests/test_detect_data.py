import json
import re
import time

import numpy as np
import pytest
import torch
from PIL import Image

from edgeres.data import DataConfig
from edgeres.data.detect import (DetectAugment, collate, is_detection_source, letterbox, letterbox_boxes,
                                 load_detection_data, shapes_det, unletterbox_boxes)
from edgeres.letterbox import PAD_VALUE
from edgeres.errors import UserInputError

SIZE = 64


def _draw(path, size, rects, background=0):
    """A PNG of `size` (w, h) with filled white rectangles (x1, y1, x2, y2) in pixels."""
    pixels = np.full((size[1], size[0], 3), background, np.uint8)
    for x1, y1, x2, y2 in rects:
        pixels[y1:y2, x1:x2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def _yolo_line(cls, rect, size):
    x1, y1, x2, y2 = rect
    w, h = size
    return f"{cls} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"


def _yolo_set(root, splits=("train", "val", "test"), per_split=4, names=("cat", "dog"), size=(80, 60)):
    """A YOLO layout whose image i of each split holds one rectangle of class i % 2; returns the rectangles."""
    drawn = {}
    for s in splits:
        for i in range(per_split):
            rect = (5 + 2 * i, 10 + i % 10, 30 + 2 * i, 40 + i % 10)
            _draw(root / "images" / s / f"{i}.png", size, [rect])
            (root / "labels" / s).mkdir(parents=True, exist_ok=True)
            (root / "labels" / s / f"{i}.txt").write_text(_yolo_line(i % 2, rect, size) + "\n")
            drawn[(s, i)] = (i % 2, rect)
    lines = [f"path: {root}"] + [f"{s}: images/{s}" for s in splits] + [f"names: {list(names)}"]
    (root / "data.yaml").write_text("\n".join(lines) + "\n")
    return drawn


def _expected(rect, size, img_size=SIZE):
    scale = min(img_size / size[0], img_size / size[1])
    pad = ((img_size - round(size[0] * scale)) // 2, (img_size - round(size[1] * scale)) // 2)
    return letterbox_boxes(np.asarray(rect, np.float32), scale, pad)


def _bright_box(image_chw, threshold=0.5):
    """The box around the bright pixels of an image in [0, 1] (white rectangles on black)."""
    ys, xs = np.nonzero(image_chw.mean(0) > threshold)
    return np.asarray([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_letterbox_centres_pads_and_inverts():
    image = np.random.default_rng(0).integers(0, 255, (50, 100, 3), dtype=np.uint8)
    out, scale, pad = letterbox(image, SIZE)
    assert out.shape == (SIZE, SIZE, 3) and scale == pytest.approx(0.64) and pad == (0, 16)
    assert (out[:16] == PAD_VALUE).all() and (out[-16:] == PAD_VALUE).all()
    boxes = np.asarray([[0, 0, 100, 50], [10.5, 3, 40, 27.25]], np.float32)
    there = letterbox_boxes(boxes, scale, pad)
    assert np.allclose(there[0], [0, 16, 64, 48], atol=1)
    assert np.abs(unletterbox_boxes(there, scale, pad) - boxes).max() < 1


def test_yolo_round_trip_boxes_match_drawn_pixels(tmp_path):
    drawn = _yolo_set(tmp_path)
    b = load_detection_data(DataConfig(str(tmp_path / "data.yaml"), img_size=SIZE))
    assert b.class_names == ["cat", "dog"] and b.in_chans == 3 and b.skipped == []
    assert {s: b.count(s) for s in ("train", "val", "test")} == {"train": 4, "val": 4, "test": 4}
    labels = b.labels("val")
    assert labels.dtype == np.float32 and labels.shape == (4, 6) and labels[:, 0].tolist() == [0, 1, 2, 3]
    mean, std = np.asarray(b.mean)[:, None, None], np.asarray(b.std)[:, None, None]
    (images, targets), = list(b.batches("val", batch_size=8))
    assert images.shape == (4, 3, SIZE, SIZE) and np.array_equal(targets, labels)
    for i in range(4):
        cls, rect = drawn[("val", i)]
        assert labels[i, 1] == cls
        assert np.abs(labels[i, 2:] - _expected(rect, (80, 60))).max() <= 1
        assert np.abs(_bright_box(images[i] * std + mean) - labels[i, 2:]).max() <= 1


def test_data_yaml_dict_names_and_missing_splits_carved(tmp_path):
    _yolo_set(tmp_path, splits=("train",), per_split=20)
    (tmp_path / "data.yaml").write_text("train: images/train\nnames: {0: cat, 1: dog}\n")  # path: the yaml's folder
    a = load_detection_data(DataConfig(str(tmp_path), img_size=SIZE, seed=1))
    b = load_detection_data(DataConfig(str(tmp_path / "data.yaml"), img_size=SIZE, seed=1))
    c = load_detection_data(DataConfig(str(tmp_path), img_size=SIZE, seed=2))
    assert a.class_names == ["cat", "dog"]
    assert [a.count(s) for s in ("train", "val", "test")] == [14, 3, 3]
    assert all(np.array_equal(a.indices[s], b.indices[s]) for s in a.indices), "same seed, same split"
    assert not all(np.array_equal(a.indices[s], c.indices[s]) for s in a.indices)
    assert sorted(np.concatenate(list(a.indices.values())).tolist()) == list(range(20))


def test_a_split_reusing_train_images_is_allowed_with_a_warning(tmp_path, caplog):
    _yolo_set(tmp_path, splits=("train",))
    (tmp_path / "data.yaml").write_text("train: images/train\nval: images/train\nnames: [cat, dog]\n")
    b = load_detection_data(DataConfig(str(tmp_path), img_size=SIZE))
    assert b.count("val") == 4 and "4 val image(s) are also in train" in caplog.text


def test_folder_without_yaml_uses_classes_txt_and_carves_val(tmp_path):
    _yolo_set(tmp_path, splits=("train", "test"), per_split=10)
    (tmp_path / "data.yaml").unlink()
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    assert is_detection_source(str(tmp_path))
    b = load_detection_data(DataConfig(str(tmp_path), img_size=SIZE))
    assert b.class_names == ["cat", "dog"] and b.count("test") == 10 and b.count("val") >= 1
    assert b.count("train") + b.count("val") == 10


def test_background_images_are_kept_without_boxes(tmp_path):
    _yolo_set(tmp_path)
    _draw(tmp_path / "images" / "val" / "empty.png", (80, 60), [])
    (tmp_path / "labels" / "val" / "blank.txt").write_text("\n")
    _draw(tmp_path / "images" / "val" / "blank.png", (80, 60), [])
    b = load_detection_data(DataConfig(str(tmp_path), img_size=SIZE))
    assert b.count("val") == 6 and len(b.labels("val")) == 4
    images, targets = next(b.batches("val", 6))
    assert images.shape[0] == 6 and set(targets[:, 0].tolist()) == {0.0, 1.0, 2.0, 3.0}


@pytest.mark.parametrize("line, reason", [
    ("2 0.5 0.5 0.1 0.1", "out of range"),
    ("0 1.5 0.5 0.1 0.1", r"outside \[0, 1\]"),
    ("0 0.5 0.5 0.1", "4 fields"),
    ("0 0.5 0.5 0.1 0.1 0.9", "6 fields"),
    ("0 0.5 abc 0.1 0.1", "non-numeric"),
    ("1.5 0.5 0.5 0.1 0.1", "not a non-negative integer"),
    ("0 0.5 0.5 0 0.1", "zero width"),
])
def test_bad_label_lines_name_file_and_line_or_are_skipped(tmp_path, line, reason):
    _yolo_set(tmp_path)
    label = tmp_path / "labels" / "train" / "1.txt"
    label.write_text(label.read_text() + line + "\n")
    with pytest.raises(UserInputError, match=rf"{re.escape(str(label))}:2: .*{reason}"):
        load_detection_data(DataConfig(str(tmp_path), img_size=SIZE))
    b = load_detection_data(DataConfig(str(tmp_path), img_size=SIZE, skip_bad=True))
    assert len(b.skipped) == 1 and b.skipped[0].startswith(f"{label}:2: ")
    assert len(b.labels("train")) == 4, "the good line of the same file is kept"


def test_polygon_lines_become_their_extent(tmp_path):
    _yolo_set(tmp_path)
    (tmp_path / "labels" / "train" / "0.txt").write_text("1 0.25 0.5 0.75 0.25 0.5 1.0\n")
    b = load_detection_data(DataConfig(str(tmp_path), img_size=SIZE))
    assert np.allclose(b.labels("train")[0, 1:], [1, 16, 8 + 12, 48, 8 + 48], atol=1)


def test_unreadable_images_and_broken_layouts(tmp_path):
    _yolo_set(tmp_path)
    bad = tmp_path / "images" / "train" / "9.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UserInputError, match=f"cannot read image {bad}"):
        load_detection_data(DataConfig(str(tmp_path), img_size=SIZE))
    b = load_detection_data(DataConfig(str(tmp_path), img_size=SIZE, skip_bad=True))
    assert b.count("train") == 4 and len(b.skipped) == 1 and str(bad) in b.skipped[0]
    (tmp_path / "data.yaml").write_text("train: images/train\n")
    with pytest.raises(UserInputError, match="lacks 'names'"):
        load_detection_data(DataConfig(str(tmp_path), img_size=SIZE))
    (tmp_path / "data.yaml").write_text("train: images/nowhere\nnames: [a]\n")
    with pytest.raises(UserInputError, match="does not exist"):
        load_detection_data(DataConfig(str(tmp_path), img_size=SIZE))
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "labels").mkdir()
    with pytest.raises(UserInputError, match="holds no images"):
        load_detection_data(DataConfig(str(tmp_path / "empty"), img_size=SIZE))
    (tmp_path / "noimages").mkdir()
    with pytest.raises(UserInputError, match="no images/ folder"):
        load_detection_data(DataConfig(str(tmp_path / "noimages"), img_size=SIZE))


def test_exif_orientation_is_applied_and_labels_follow_the_upright_image(tmp_path):
    _yolo_set(tmp_path)
    rect, size = (10, 5, 30, 20), (80, 40)
    upright = Image.fromarray(_draw(tmp_path / "tmp.png", size, [rect]))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter left: viewers turn it right
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "images" / "val" / "rot.png", exif=exif)
    (tmp_path / "labels" / "val" / "rot.txt").write_text(_yolo_line(0, rect, size) + "\n")
    b = load_detection_data(DataConfig(str(tmp_path), img_size=SIZE))
    ds = b.dataset("val")
    image, boxes = ds[len(ds) - 1]
    mean, std = torch.tensor(b.mean)[:, None, None], torch.tensor(b.std)[:, None, None]
    assert np.abs(boxes[0, 1:].numpy() - _expected(rect, size)).max() <= 1
    assert np.abs(_bright_box((image * std + mean).numpy()) - boxes[0, 1:].numpy()).max() <= 1


def _coco(tmp_path, annotations):
    (tmp_path / "annotations").mkdir()
    for i in range(6):
        _draw(tmp_path / "val2017" / f"{i}.png", (80, 60), [(10, 10, 40, 30)])
    doc = {"images": [{"id": 100 + i, "file_name": f"{i}.png", "width": 80, "height": 60} for i in range(6)],
           "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
           "annotations": annotations}
    path = tmp_path / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps(doc))
    return path


def test_coco_round_trip_remaps_categories(tmp_path):
    anns = [{"id": i, "image_id": 100 + i, "category_id": (3, 7)[i % 2], "bbox": [10, 10, 30, 20], "iscrowd": 0}
            for i in range(5)]  # image 105 has none: background
    path = _coco(tmp_path, anns + [{"id": 9, "image_id": 100, "category_id": 3, "bbox": [0, 0, 80, 60], "iscrowd": 1}])
    assert is_detection_source(str(path))
    b = load_detection_data(DataConfig(str(path), img_size=SIZE, split=(0.5, 0.25, 0.25)))
    assert b.class_names == ["cat", "dog"]
    assert sum(b.count(s) for s in ("train", "val", "test")) == 6
    labels = np.concatenate([b.labels(s) for s in ("train", "val", "test")])
    assert len(labels) == 5 and sorted(labels[:, 1].tolist()) == [0, 0, 0, 1, 1]
    assert np.abs(labels[:, 2:] - _expected((10, 10, 40, 30), (80, 60))).max() <= 1


def test_coco_folder_with_one_file_per_split(tmp_path):
    anns = [{"id": i, "image_id": 100 + i, "category_id": 3, "bbox": [10, 10, 30, 20]} for i in range(6)]
    val = _coco(tmp_path, anns)
    train = val.with_name("instances_train2017.json")
    train.write_text(val.read_text())
    for i in range(6):
        _draw(tmp_path / "train2017" / f"{i}.png", (80, 60), [(10, 10, 40, 30)])
    assert is_detection_source(str(tmp_path))
    b = load_detection_data(DataConfig(str(tmp_path), img_size=SIZE))
    assert b.count("val") == 6 and b.count("train") + b.count("test") == 6 and b.count("test") >= 1
    assert all("train2017" in b.source.images.name(int(i)) for i in b.indices["test"]), "test carved from train"


@pytest.mark.parametrize("bad, reason", [
    ({"category_id": 5}, "unknown category_id 5"),
    ({"image_id": 999}, "unknown image_id 999"),
    ({"bbox": [10, 10, 0, 20]}, "non-positive width"),
])
def test_bad_coco_annotations_are_named_by_id(tmp_path, bad, reason):
    anns = [{"id": 40 + i, "image_id": 100 + i, "category_id": 3, "bbox": [10, 10, 30, 20]} for i in range(6)]
    anns[2].update(bad)
    path = _coco(tmp_path, anns)
    with pytest.raises(UserInputError, match=f"annotation id 42: .*{reason}"):
        load_detection_data(DataConfig(str(path), img_size=SIZE))
    b = load_detection_data(DataConfig(str(path), img_size=SIZE, skip_bad=True))
    assert len(b.skipped) == 1 and sum(len(b.labels(s)) for s in ("train", "val", "test")) == 5


def test_shapes_det_deterministic_varied_and_exact():
    shapes_det._CACHE.clear()
    start = time.perf_counter()
    b = load_detection_data(DataConfig("shapes-det", img_size=SIZE, detect_images=60))
    assert time.perf_counter() - start < 3.0, "the test-sized set builds in about a second"
    again = shapes_det.generate(0, SIZE, 60)
    shapes_det._CACHE.clear()
    fresh = shapes_det.generate(0, SIZE, 60)
    assert np.array_equal(again[0], fresh[0]) and all(np.array_equal(x, y) for x, y in zip(again[1], fresh[1]))
    assert not np.array_equal(fresh[0], shapes_det.generate(1, SIZE, 60)[0])
    assert b.class_names == list(shapes_det.CLASSES) and sum(b.count(s) for s in b.indices) == 60
    labels = np.concatenate([b.labels(s) for s in ("train", "val", "test")])
    sides = np.minimum(labels[:, 4] - labels[:, 2], labels[:, 5] - labels[:, 3])
    assert set(labels[:, 1].astype(int).tolist()) == {0, 1, 2, 3}
    assert (sides <= 0.12 * SIZE).sum() >= 10 and sides.max() >= 0.3 * SIZE, "small and large objects"
    assert len(labels) / 60 >= 2.5, "several objects per image"


def test_shapes_det_boxes_enclose_drawn_pixels():
    occluded = 0
    for i in range(10):
        pixels, boxes, owner = shapes_det.render_scene(128, np.random.default_rng([3, i]))
        for k, (_, x1, y1, x2, y2) in enumerate(boxes):
            ys, xs = np.nonzero(owner == k)
            inside = np.zeros(owner.shape, bool)
            inside[int(y1):int(y2), int(x1):int(x2)] = True
            assert inside[ys, xs].all(), "every pixel an object shows lies in its box"
            if [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] != [x1, y1, x2, y2]:
                occluded += 1
                continue
            outside = pixels[~inside].reshape(-1, 3).astype(float).mean(0)
            assert np.abs(pixels[ys, xs].astype(float).mean(0) - outside).mean() > 20, "objects stand out"
    assert 0 < occluded < 10, "some objects are partly covered, most not"


def test_flip_moves_boxes_to_the_mirrored_objects():
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[10:20, 5:25] = 255
    boxes = np.asarray([[1, 5, 10, 25, 20]], np.float32)
    out, moved = DetectAugment().apply(image, boxes, 1.0, (0.0, 0.0), True)
    assert moved.tolist() == [[1, 39, 10, 59, 20]]
    assert np.array_equal(_bright_box(out.transpose(2, 0, 1) / 255.0), moved[0, 1:])


def test_random_augmentation_keeps_boxes_on_objects_and_is_seeded():
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[20:40, 16:44] = 255
    boxes = np.asarray([[0, 16, 20, 44, 40]], np.float32)
    augment, flipped = DetectAugment(hflip=True, jitter=0.0), set()
    image[20:40, 16:24] = 200  # a darker left end tells a mirrored object apart
    for seed in range(12):
        torch.manual_seed(seed)
        out, moved = augment(image, boxes)
        torch.manual_seed(seed)
        assert np.array_equal(augment(image, boxes)[0], out), "torch's seed decides the draw"
        assert len(moved) == 1
        assert np.abs(_bright_box(out.transpose(2, 0, 1) / 255.0, 0.6) - moved[0, 1:]).max() <= 1.5
        x1, y1, x2, y2 = moved[0, 1:].astype(int)
        left, right = out[(y1 + y2) // 2, x1 + 1, 0], out[(y1 + y2) // 2, x2 - 2, 0]
        flipped.add(bool(left > right))
    assert flipped == {True, False}, "some draws mirror, some do not"


def test_boxes_pushed_out_or_shrunk_are_dropped():
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    boxes = np.asarray([[0, 0, 10, 10, 30], [1, 40, 40, 60, 60], [2, 20, 20, 40, 40]], np.float32)
    _, moved = DetectAugment().apply(image, boxes, 1.0, (-12.0, 0.0), False)
    assert moved[:, 0].tolist() == [1, 2], "a box left with under 20% of its area is dropped"
    _, shrunk = DetectAugment().apply(image, boxes, 0.08, (0.0, 0.0), False)
    assert len(shrunk) == 0, "boxes under 2 px are dropped"


def test_collate_and_train_dataset_shapes():
    b = load_detection_data(DataConfig("shapes-det", img_size=SIZE, detect_images=20))
    ds = b.dataset("train")
    assert ds.augment is not None and b.dataset("val").augment is None
    items = [ds[i] for i in range(3)] + [(torch.zeros(3, SIZE, SIZE), torch.zeros((0, 5)))]
    images, targets = collate(items)
    assert images.shape == (4, 3, SIZE, SIZE) and targets.shape == (sum(len(t) for _, t in items), 6)
    assert targets[:, 0].tolist() == sorted(targets[:, 0].tolist()) and 3 not in targets[:, 0].tolist()
    assert ((targets[:, 2:] >= 0) & (targets[:, 2:] <= SIZE)).all()
    assert b.collate is collate and b.hflip is True
    own = load_detection_data(DataConfig("shapes-det", img_size=SIZE, detect_images=20, normalize="dataset"))
    assert own.mean != b.mean and all(0 < m < 1 for m in own.mean) and all(0 < s < 0.5 for s in own.std)


@pytest.mark.parametrize("source, expected", [("shapes-det", True), ("shapes", False), ("digits", False)])
def test_is_detection_source_names(source, expected):
    assert is_detection_source(source) is expected


def test_is_detection_source_folders(tmp_path):
    (tmp_path / "cls" / "cat").mkdir(parents=True)
    assert not is_detection_source(str(tmp_path / "cls"))
    (tmp_path / "d.yaml").write_text("names: [a]\n")
    assert is_detection_source(str(tmp_path / "d.yaml"))
    with pytest.raises(UserInputError, match="detect_images"):
        DataConfig("shapes-det", detect_images=2)
