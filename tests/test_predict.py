"""`edgeres predict`: any artifact of a classifier on image files, annotated copies and one JSON."""
import json
import sys

import numpy as np
import pytest
from PIL import Image

from edgeres.data import DataConfig, load_data
from edgeres.errors import UserInputError
from edgeres.predict import PREDICTIONS_FILE, predict_images


@pytest.fixture
def digit_images(tiny_checkpoint, tmp_path):
    """Eight test-split digits saved as PNG files (in a nested folder), with their true labels."""
    bundle = load_data(DataConfig("digits", img_size=24))
    folder = tmp_path / "images" / "nested"
    folder.mkdir(parents=True)
    labels = {}
    for k, i in enumerate(bundle.indices["test"][:8]):
        pixels = (bundle.source.cache[i, 0].numpy() * 255).round().astype(np.uint8)
        name = f"digit_{k}.png"
        Image.fromarray(pixels, mode="L").save(folder / name)
        labels[f"nested/{name}"] = int(bundle.source.labels[i])
    return tmp_path / "images", labels


def test_predict_classifier_matches_eval_and_writes_annotated_images(tiny_checkpoint, digit_images, tmp_path):
    images, labels = digit_images
    out = tmp_path / "pred"
    doc = predict_images(tiny_checkpoint, images, out)
    saved = json.loads((out / PREDICTIONS_FILE).read_text())
    assert saved["images"] == doc["images"] == 8 and saved["task"] == "classification"
    by_file = {p["file"]: p for p in saved["predictions"]}
    assert set(by_file) == set(labels)
    for p in by_file.values():
        probs = [t["probability"] for t in p["top"]]
        assert probs == sorted(probs, reverse=True) and p["class"] == p["top"][0]["class"]
        annotated = Image.open(out / p["annotated"])
        assert annotated.size == (24, 24) and annotated.mode == "RGB"
    # The same images through the evaluation path (the data pipeline) give the same top-1 classes.
    from edgeres import runtime
    from edgeres.tasks import get_task

    bundle = load_data(DataConfig("digits", img_size=24))
    x, _ = next(bundle.batches("test", 8))
    probs = get_task("classification").postprocess(runtime.load(tiny_checkpoint)(x))
    assert [by_file[f"nested/digit_{k}.png"]["class_id"] for k in range(8)] == list(probs.argmax(1))
    right = sum(by_file[f]["class_id"] == y for f, y in labels.items())
    assert right >= 5, right  # a trained model reads most digits right


def test_predict_exported_onnx_agrees_with_checkpoint(tiny_checkpoint, digit_images, tmp_path):
    from edgeres.export import ExportConfig, export_checkpoint

    images, _ = digit_images
    doc = export_checkpoint(tiny_checkpoint, tmp_path / "exp", ExportConfig(formats=("onnx",), precisions=("fp32",)))
    onnx_file = doc["artifacts"][0]["file"]
    a = predict_images(tiny_checkpoint, images, tmp_path / "a")
    b = predict_images(onnx_file, images, tmp_path / "b")
    assert [p["class_id"] for p in a["predictions"]] == [p["class_id"] for p in b["predictions"]]
    assert b["runner"]["backend"] == "onnxruntime"


def test_predict_refuses_bad_inputs(tiny_checkpoint, digit_images, tmp_path):
    images, _ = digit_images
    with pytest.raises(UserInputError, match="does not exist"):
        predict_images(tiny_checkpoint, tmp_path / "missing", tmp_path / "o")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserInputError, match="holds no image files"):
        predict_images(tiny_checkpoint, empty, tmp_path / "o")
    with pytest.raises(UserInputError, match="holds the input images"):
        predict_images(tiny_checkpoint, images, images / "nested")
    broken = images / "nested" / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(UserInputError, match="cannot read image"):
        predict_images(tiny_checkpoint, images, tmp_path / "o")
    doc = predict_images(tiny_checkpoint, images, tmp_path / "o2", skip_bad=True)
    assert doc["images"] == 8 and [s["file"] for s in doc["skipped"]] == ["nested/broken.png"]


def test_predict_cli(tiny_checkpoint, digit_images, tmp_path, monkeypatch, capsys):
    from edgeres import cli

    images, _ = digit_images
    monkeypatch.setattr(sys, "argv", ["edgeres", "predict", str(tiny_checkpoint), str(images / "nested" / "digit_0.png"),
                                      "--out", str(tmp_path / "one")])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code in (0, None), capsys.readouterr()
    assert json.loads((tmp_path / "one" / PREDICTIONS_FILE).read_text())["images"] == 1
    assert (tmp_path / "one" / "digit_0.png").is_file()
