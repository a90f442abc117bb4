"""`edgeres deploy`: a folder that runs a model on a named device without torch or edgeres, and checks itself there.

What goes in: the model file the device's preset asks for (exported here, with the exporter's validation, unless
the given artifact already is one), `meta.json` (everything `infer.py` needs to feed the model and read its
outputs as `edgeres predict` does), `infer.py` and the `letterbox.py` it imports, `requirements.txt` pinned to the
versions validated here, TensorRT build scripts, a DeepStream config, golden inputs with the outputs this host
computed for them, a README with what was measured here and what is estimated for the device, and `SHA256SUMS`.

The bundle is built in a scratch folder beside `out` and renamed into place whole: a reader never sees half a
bundle, and a failed deploy leaves the previous one untouched.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeres.artifacts import (EXPORT_RECORD, atomic_path, check_recorded_sha256, package_versions, read_json,
                               scratch_dir, sha256_file, write_json, write_text)
from edgeres.deploy.presets import FORMAT_OF
from edgeres.errors import UserInputError
from edgeres.runtime.embedded import read_export_meta
from edgeres.tasks import get_task

log = logging.getLogger("edgeres")

BUNDLE_FORMAT = 1
META = "meta.json"
SUMS = "SHA256SUMS"
GOLDEN_INPUTS = "golden/inputs.npy"
GOLDEN_EXPECTED = "golden/expected.npz"
# What the bundle's process imports on the device, besides the standard library.
RUNTIME_PACKAGES = {"onnxruntime": ("onnxruntime",), "openvino": ("openvino",), "tensorrt": ()}


@dataclasses.dataclass(frozen=True)
class DeployConfig:
    device: str = "host"
    precision: str | None = None        # default: the preset's first precision the device runs
    frame: tuple[int, int] | None = None  # (height, width) of the camera frames the graph takes; None: any size
    preprocess: bool | None = None      # resize, layout and normalisation in the graph; default: the preset's
    golden: int = 4                     # golden inputs the device checks itself with
    measure: bool = True                # time the bundle's model here (a fresh process) for the README
    archive: bool = False               # also write <out>.tar.gz

    def __post_init__(self) -> None:
        if isinstance(self.golden, bool) or not isinstance(self.golden, int) or not 1 <= self.golden <= 64:
            raise UserInputError(f"golden must be an integer from 1 to 64, got {self.golden!r}")
        if self.frame is not None and (len(self.frame) != 2 or min(self.frame) < 1):
            raise UserInputError(f"frame must be (height, width) in pixels, got {self.frame!r}")


def deploy(source: str | Path, out: str | Path, config: DeployConfig = DeployConfig(),
           progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the bundle for `source` (a checkpoint, an export folder or an exported file) into `out`."""
    from edgeres.deploy.devices import load_device
    from edgeres.deploy.presets import load_preset

    say = progress or (lambda _msg: None)
    device = load_device(config.device)
    preset = load_preset(device.preset)
    precision = config.precision or next((p for p in preset.precisions if p in device.precisions), None)
    if precision is None or precision not in device.precisions:
        raise UserInputError(f"{device.name} runs {list(device.precisions)}; precision {precision!r} is not one of them")
    source, out = Path(source), Path(out)
    _check_out(out, source)
    with scratch_dir(out.parent, out.name) as work:
        say(f"model for {device.name} ({preset.backend} {precision})")
        model = _model_for(source, preset, precision, work / "exports")
        stage = work / "bundle"
        stage.mkdir()
        files = _copy_model(model, stage)
        meta = _meta(model, preset, precision, files)
        # A preset's in-graph preprocessing needs the camera's frame size: resizing frames of any size in the graph
        # is exact but slower than the host (benchmarks/preprocess.py). --preprocess asks for it regardless.
        preprocess = config.preprocess if config.preprocess is not None else (
            preset.preprocess_in_graph and config.frame is not None)
        if preprocess:
            say("preprocessing into the graph")
            meta["input"].update(_add_preprocess(stage, meta, config.frame))
        say("golden inputs")
        _write_golden(stage, meta, model.meta, config.golden)
        say("on-target scripts")
        _write_templates(stage, meta, model)
        write_text(stage / "requirements.txt", _requirements(preset.backend))
        measured = _measure(stage, meta, device, model) if config.measure else {}
        write_json(stage / META, meta)
        _write_sums(stage)  # the self-test checks them; written again once the README is in
        say("self-test")
        measured.update(_self_check(stage))
        write_text(stage / "README.md", _readme(meta, device, model, measured))
        _write_sums(stage)
        _publish(stage, out, work)
    archive = _archive(out) if config.archive else None
    return {"out": str(out), "archive": str(archive) if archive else None, "device": device.name,
            "backend": meta["backend"], "precision": precision, "model": meta["model"], "measured": measured}


# --- the model ---

@dataclasses.dataclass
class _Model:
    file: Path                  # what the runtime loads (.onnx, .xml) or the ONNX a TensorRT engine is built from
    backend: str
    precision: str
    record: dict[str, Any]      # the export.json entry
    document: dict[str, Any]    # the whole export.json
    extra: list[Path]           # files that travel with it (an IR's .bin, TensorRT's build scripts)
    meta: Any = None            # the file's embedded ModelMeta (read by _meta)


def _check_out(out: Path, source: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file; expected a folder for the bundle")
    if out.is_dir() and any(out.iterdir()) and not (out / META).is_file():
        raise UserInputError(f"--out {out} holds files that are not a bundle; choose an empty or new folder")
    resolved = out.resolve()
    if resolved == source.resolve() or resolved in source.resolve().parents:
        raise UserInputError(f"--out {out} holds the source {source}; write the bundle to a folder of its own")


def _model_for(source: Path, preset: Any, precision: str, exports: Path) -> _Model:
    """The exported file the preset's backend runs: the given one, one from its export folder, or a new export."""
    from edgeres.checkpoint import is_checkpoint

    backend = preset.backend
    if source.is_file():
        folder = source.parent
        if not (folder / EXPORT_RECORD).is_file():
            raise UserInputError(f"{source} has no {EXPORT_RECORD} beside it; give the checkpoint or the export "
                                 "folder edgeres wrote, so the bundle can record how the file was made")
        found = _find(folder, backend, precision, source)
        if found is None:
            raise UserInputError(f"{source} is not the {backend} {precision} file the device's preset needs; give "
                                 f"the checkpoint to export it, or pass --precision")
        return found
    if (source / EXPORT_RECORD).is_file():
        found = _find(source, backend, precision)
        if found is not None:
            return found
        checkpoint = Path(read_json(source / EXPORT_RECORD).get("source", ""))
        if not is_checkpoint(checkpoint):
            raise UserInputError(f"{source} holds no {backend} {precision} export and its checkpoint "
                                 f"{checkpoint} is gone; give the checkpoint")
        source = checkpoint
    if not is_checkpoint(source):
        raise UserInputError(f"{source} is not a checkpoint (model.safetensors + model.json), an export folder or an "
                             "exported .onnx/.xml file")
    from edgeres.checkpoint import load_meta
    from edgeres.export import export_checkpoint

    # TensorRT's NMS plugin stays out of a bundle's ONNX: the golden outputs are computed here by ONNX Runtime,
    # which cannot run it, and infer.py applies NMS after the engine instead.
    graph_nms = get_task(load_meta(source).task).graph_nms and backend != "tensorrt"
    config = preset.export_config(detector=graph_nms, formats=(FORMAT_OF[backend],), precisions=(precision,))
    document = export_checkpoint(source, exports, config)
    if not document["artifacts"]:
        reasons = "; ".join(f.get("error") or "; ".join(f["validation"]["failures"]) for f in document["failed"])
        raise UserInputError(f"exporting {source} to {backend} {precision} failed validation: {reasons}")
    found = _find(exports, backend, precision)
    if found is None:
        raise RuntimeError(f"the export just written to {exports} does not list its {backend} {precision} file")
    return found


def _find(folder: Path, backend: str, precision: str, file: Path | None = None) -> _Model | None:
    document = read_json(folder / EXPORT_RECORD)
    for entry in document.get("artifacts", []):
        if entry.get("status") != "ok" or entry["backend"] != backend or entry["precision"] != precision:
            continue
        names = sorted(entry.get("files") or {})
        paths = [folder / n for n in names]
        if backend == "tensorrt":
            # Only the ONNX the engine is built from: the bundle writes its own build scripts.
            main, extra = folder / f"tensorrt-{precision}" / entry["onnx"], []
        else:
            main = folder / Path(entry["file"]).name
            extra = [p for p in paths if p != main]
        if file is not None and main.resolve() != file.resolve():
            continue
        check_recorded_sha256(*(p for p in [main, *extra] if p.suffix in (".onnx", ".xml", ".bin")))
        return _Model(main, backend, precision, entry, document, extra)
    return None


def _copy_model(model: _Model, stage: Path) -> list[str]:
    """Copy the model file(s) into the bundle; return their names there."""
    names = []
    for path in [model.file, *model.extra]:
        if path.name in ("build_engine.py", "build_engine.sh") or path.suffix == ".json":
            continue  # the bundle writes its own scripts and records
        shutil.copyfile(path, stage / path.name)
        names.append(path.name)
    return names


def _meta(model: _Model, preset: Any, precision: str, files: list[str]) -> dict[str, Any]:
    """meta.json: what infer.py needs, read from the file's own embedded model.json and export.json."""
    runner_meta = model.meta = read_export_meta(model.file)
    task = get_task(runner_meta.task)
    outputs = list(model.record.get("output_names") or model.document.get("output_names") or ["logits"])
    if model.backend == "tensorrt" and (model.record.get("nms") or {}).get("plugin"):
        outputs = ["detections"]
    fields = task.deploy_fields(outputs)
    tolerance = dataclasses.asdict(task.tolerance(precision))
    version = package_versions(("edgeres",)).get("edgeres")
    return {
        "format_version": BUNDLE_FORMAT, "task": runner_meta.task, "backend": model.backend,
        "model": "model.engine" if model.backend == "tensorrt" else model.file.name,
        "onnx": model.file.name if model.backend == "tensorrt" else None,
        "files": files, "precision": precision,
        "input": {"name": "input", "img_size": runner_meta.img_size, "in_chans": runner_meta.in_chans,
                  "mean": list(runner_meta.mean), "std": list(runner_meta.std),
                  "color": "RGB" if runner_meta.in_chans == 3 else "L", **fields["input"],
                  "in_graph_preprocess": False, "layout": "NCHW", "dtype": "float32"},
        "outputs": outputs, "class_names": list(runner_meta.class_names or
                                                [str(i) for i in range(runner_meta.num_classes)]),
        "postprocess": fields["postprocess"], "tolerance": tolerance,
        "golden": {"inputs": GOLDEN_INPUTS, "expected": GOLDEN_EXPECTED},
        "threads": preset.threads,
        "source": {"checkpoint_sha256": model.document.get("source_sha256"), "arch": model.document.get("arch"),
                   "artifact": model.file.name, "sha256": sha256_file(model.file), "edgeres_version": version,
                   "validation": model.record.get("validation")},
    }


def _add_preprocess(stage: Path, meta: dict[str, Any], frame: tuple[int, int] | None) -> dict[str, Any]:
    """Put resize (or letterbox), layout and normalisation in front of the bundle's model file, in place; return
    the meta.json input fields of the new graph (it takes uint8 NHWC frames)."""
    from edgeres.export import preprocess

    model = stage / (meta["onnx"] or meta["model"])
    add = preprocess.add_openvino_preprocess if model.suffix == ".xml" else preprocess.add_onnx_preprocess
    staged = model.with_name(f"preprocessed.{model.name}")  # never read and write one file at once
    fields = add(model, staged, frame=frame)
    for suffix in ((".xml", ".bin") if model.suffix == ".xml" else (model.suffix,)):
        os.replace(staged.with_suffix(suffix), model.with_suffix(suffix))
    return fields


# --- golden inputs: what the device must reproduce ---

def _golden_frames(meta: dict[str, Any], data: dict[str, Any] | None, n: int) -> tuple[np.ndarray, str]:
    """n uint8 HxWx3 frames and where they came from: the model's own test split when its data is at hand (a
    detector then finds real objects to compare), smooth seeded noise otherwise (the check is that the device
    computes what this host computed, not accuracy)."""
    from PIL import Image

    size = meta["input"]["img_size"]
    h, w = meta["input"].get("frame") or (size, size)
    images, origin = _test_images(meta, data, n)
    if images is None:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (n, max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
        origin = "seeded noise (the model's data was not at hand)"
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in images]), origin


def _test_images(meta: dict[str, Any], data: dict[str, Any] | None, n: int) -> tuple[np.ndarray | None, str]:
    """The first n test-split inputs of the model's data, back in uint8 RGB pixels."""
    from edgeres.data import DataConfig

    try:
        bundle = get_task(meta["task"]).load_data(DataConfig.from_dict(data or {}))
        x = next(bundle.batches("test", n))[0]
    except (UserInputError, OSError, TypeError, ValueError, StopIteration) as e:
        log.info("golden inputs from noise: %s", e)
        return None, ""
    mean = np.asarray(meta["input"]["mean"], np.float32)[:, None, None]
    std = np.asarray(meta["input"]["std"], np.float32)[:, None, None]
    pixels = np.clip((x * std + mean) * 255, 0, 255).round().astype(np.uint8).transpose(0, 2, 3, 1)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return pixels, f"the first {len(pixels)} test-split images of {(data or {}).get('source')}"


def _prepared(meta: dict[str, Any], model_meta: Any, frames: np.ndarray) -> np.ndarray:
    """What the model file takes for these frames: the frames themselves when the graph preprocesses, else the
    task's own host preparation (as `edgeres predict` does)."""
    if meta["input"]["in_graph_preprocess"]:
        return frames
    from PIL import Image

    task = get_task(meta["task"])
    return np.stack([task.prepare(Image.fromarray(f), model_meta)[0] for f in frames]).astype(np.float32)


def _run_file(path: Path, precision: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """The file's named outputs for x, from its runtime's own API as infer.py calls it: no Runner input checks
    (a preprocessing graph takes uint8 frames), and fp32 files in f32 (OpenVINO's CPU default is bf16 where the
    CPU has it; export validation and infer.py ask for f32). An ONNX (also the one a TensorRT engine is built
    from) runs in ONNX Runtime. One input at a time: a bundle's graph may take a fixed batch of one."""
    if path.suffix == ".xml":
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU",
                                           {"INFERENCE_PRECISION_HINT": "f32"} if precision == "fp32" else {})

        def run(one: np.ndarray) -> dict[str, np.ndarray]:
            result = compiled(one)
            return {o.get_any_name(): np.asarray(result[o]) for o in compiled.outputs}
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(one: np.ndarray) -> dict[str, np.ndarray]:
            values = session.run(None, {session.get_inputs()[0].name: one})
            return {o.name: np.asarray(v) for o, v in zip(session.get_outputs(), values)}
    parts = [run(x[i:i + 1]) for i in range(len(x))]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _write_golden(stage: Path, meta: dict[str, Any], model_meta: Any, n: int) -> None:
    frames, meta["golden"]["origin"] = _golden_frames(meta, model_meta.data, n)
    x = _prepared(meta, model_meta, frames)
    expected = _run_file(stage / (meta["onnx"] or meta["model"]), meta["precision"], x)
    (stage / "golden").mkdir()
    with atomic_path(stage / GOLDEN_INPUTS) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, x, allow_pickle=False)
    with atomic_path(stage / GOLDEN_EXPECTED) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **expected)
    from PIL import Image

    for i, frame in enumerate(frames):  # the same inputs as images, for `infer.py golden/` by hand
        Image.fromarray(frame).save(stage / "golden" / f"image{i}.png")


# --- scripts, requirements, README, sums ---

def _write_templates(stage: Path, meta: dict[str, Any], model: _Model) -> None:
    from edgeres.deploy import templates

    shutil.copyfile(templates.template_path("infer.py"), stage / "infer.py")
    shutil.copyfile(Path(__file__).resolve().parents[1] / "letterbox.py", stage / "letterbox.py")
    write_text(stage / "labels.txt", templates.labels_txt(meta))
    (stage / "deepstream").mkdir()
    write_text(stage / "deepstream" / "config_infer_primary.txt", templates.render_deepstream(meta))
    write_text(stage / "deepstream" / "labels.txt", templates.deepstream_labels(meta))
    if model.backend == "tensorrt":
        spec = model.record.get("spec") or {}
        defaults = {"onnx": meta["onnx"], "engine": meta["model"], "precision": meta["precision"],
                    "min_batch": spec.get("min_batch", 1), "opt_batch": spec.get("opt_batch", 1),
                    "max_batch": spec.get("max_batch", 1), "workspace_mb": spec.get("workspace_mb", 1024),
                    "fp16_fallback": spec.get("fp16_fallback", True), "timing_cache": "timing.cache", "meta": META,
                    "input_shape": _onnx_input_shape(stage / meta["onnx"])}
        write_text(stage / "build_engine.py", templates.render_build_engine(defaults))
        write_text(stage / "build_engine.sh", templates.render_build_engine_sh(defaults))
        (stage / "build_engine.sh").chmod(0o755)


def _onnx_input_shape(path: Path) -> list[int | None]:
    """The ONNX input's dims, None where dynamic (what the build scripts' optimization profile needs)."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def _requirements(backend: str) -> str:
    """Pinned to what this host validated the bundle with; TensorRT and CUDA come with the device's JetPack."""
    names = ("numpy", "pillow", *RUNTIME_PACKAGES[backend])
    from importlib import metadata

    lines = []
    for name in names:
        try:
            lines.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            lines.append(name)
    if backend == "tensorrt":
        lines.append("# tensorrt and CUDA: from the device's JetPack (see README.md); not installed by pip")
    return "\n".join(lines) + "\n"


def _measure(stage: Path, meta: dict[str, Any], device: Any, model: _Model) -> dict[str, Any]:
    """This host's p50 of the model (a fresh process) and the roofline estimate for the device."""
    from edgeres.bench.run import BenchConfig, bench_artifacts
    from edgeres.deploy.estimate import estimate

    measured: dict[str, Any] = {}
    try:  # an fp16 engine is built from the fp32 ONNX: its layers are estimated as the engine runs them
        guess = estimate(stage / (meta["onnx"] or meta["model"]), device,
                         precision="fp16" if meta["precision"] == "fp16" else None)
        measured["estimate_ms"] = round(float(guess.total_ms), 3)
    except UserInputError as e:
        log.warning("no latency estimate for %s: %s", device.name, e)
    # The exported file before any in-graph preprocessing: bench feeds float32 NCHW inputs.
    result = bench_artifacts([model.file], BenchConfig(threads=(meta.get("threads") or 2,), warmup=5, runs=50,
                                                       budget_s=5.0, min_seconds=1.0, end_to_end=False,
                                                       accuracy=False))
    entry = result["artifacts"][0]
    measured.update(host_p50_ms=round(entry["latency"]["engine"]["p50_ms"], 3), host_backend=entry["backend"],
                    host_cpu=result["environment"].get("cpu"))
    return measured


# Runs the bundle's own `infer.py --selftest` and reports the process's exit code, peak memory and whether it
# imported torch or edgeres. `-I`: no user site, no PYTHONPATH, no current folder on sys.path.
_SELFTEST = """
import json, runpy, sys
sys.argv = ["infer.py", "--selftest"]
code = 0
try:
    runpy.run_path("infer.py", run_name="__main__")
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
peak = None
try:
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM"))
except (OSError, StopIteration):
    pass
print("EDGERES-SELFTEST " + json.dumps({"exit": code, "peak_mb": peak,
                                        "imported": sorted(m for m in ("torch", "edgeres") if m in sys.modules)}))
"""


def _self_check(stage: Path) -> dict[str, Any]:
    """Run the finished bundle's self-test here, as the device will; a failure is a bug in what was written."""
    res = subprocess.run([sys.executable, "-I", "-c", _SELFTEST], cwd=stage, capture_output=True, text=True)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("EDGERES-SELFTEST ")), None)
    report = json.loads(line.split(" ", 1)[1]) if line else {"exit": res.returncode}
    if report["exit"] != 0 or report.get("imported"):
        raise RuntimeError(f"the bundle's own `infer.py --selftest` failed here (exit {report['exit']}, imported "
                           f"{report.get('imported')}):\n{res.stdout}{res.stderr}")
    return {"selftest_peak_mb": None if report.get("peak_mb") is None else round(report["peak_mb"], 1)}


def _readme(meta: dict[str, Any], device: Any, model: _Model, measured: dict[str, Any]) -> str:
    task, metric = meta["task"], get_task(meta["task"]).metric
    validation = meta["source"].get("validation") or {}
    val = validation.get(f"val_{metric}")
    lines = [f"# {meta['source']['arch']} for {device.name}", "",
             f"A {task} model ({meta['backend']}, {meta['precision']}) written by `edgeres deploy`. Everything here "
             "runs with numpy, Pillow and the runtime: no torch, no edgeres.", "",
             "## Run it", "", "```sh", "pip install -r requirements.txt"]
    if meta["backend"] == "tensorrt":
        lines += [f"./build_engine.sh          # or: python3 build_engine.py  (builds {meta['model']} on this device)"]
    lines += ["python infer.py --selftest  # checks SHA256SUMS and the golden inputs (exit 0 ok, 1 mismatch)",
              "python infer.py IMAGES --out predictions/", "```", "",
              "`predictions/predictions.json` holds the same records as `edgeres predict`.", "",
              "## Measured and estimated", "", "| figure | value | how |", "|---|---|---|"]
    if val is not None:
        lines.append(f"| validation {metric} of this file | {val:.4f} | edgeres export, val split, this host |")
    if measured.get("host_p50_ms") is not None:
        lines.append(f"| p50 latency of the model, batch 1 | {measured['host_p50_ms']:.3f} ms | measured on this "
                     f"host ({measured.get('host_cpu')}, {measured.get('host_backend')}), `edgeres bench` |")
    if measured.get("selftest_peak_mb") is not None:
        lines.append(f"| peak memory of `python infer.py --selftest` | {measured['selftest_peak_mb']:.0f} MB | "
                     "measured on this host (VmHWM; the process imports numpy, Pillow and the runtime only) |")
    if measured.get("estimate_ms") is not None:
        lines.append(f"| p50 latency on {device.name}, batch 1 | {measured['estimate_ms']:.3f} ms | **estimate** "
                     f"(roofline, `edgeres estimate --device {device.name}`), not measured |")
    inp = meta["input"]
    lines += ["", "## Input", "",
              ("The graph takes uint8 frames (N, H, W, 3) RGB and resizes and normalises them itself."
               if inp["in_graph_preprocess"] else
               f"The model takes float32 (N, {inp['in_chans']}, {inp['img_size']}, {inp['img_size']}): "
               f"{inp['resize']} to {inp['img_size']} px, scaled to [0, 1], minus mean {inp['mean']}, "
               f"divided by std {inp['std']}; `infer.py` does this."), ""]
    if inp["in_graph_preprocess"] and meta["backend"] == "openvino":
        lines += ["From a camera, give `infer.run_model` each frame as a writeable C-contiguous array (what OpenCV's "
                  "`cvtColor` returns): OpenVINO reads it in place. A read-only array, such as `np.asarray` of a PIL "
                  "image, is copied first (1.13x the time per frame for the demo model, `benchmarks/preprocess.py` "
                  "in edgeres).", ""]
    return "\n".join(lines)


def _write_sums(stage: Path) -> None:
    files = sorted(p for p in stage.rglob("*") if p.is_file() and p.name != SUMS)
    write_text(stage / SUMS, "".join(f"{sha256_file(p)}  {p.relative_to(stage).as_posix()}\n" for p in files))


def _publish(stage: Path, out: Path, work: Path) -> None:
    """Rename the finished bundle onto `out`; a previous bundle there moves aside first and is then removed."""
    old = work / "previous"
    if out.exists():
        os.replace(out, old)
    os.replace(stage, out)


def _archive(out: Path) -> Path:
    path = out.with_name(out.name + ".tar.gz")
    with atomic_path(path) as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(out, arcname=out.name)
    return path
