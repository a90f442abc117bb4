"""In-graph preprocessing: the demo INT8 IR from a 640x480 uint8 camera frame, host preprocessing vs in the graph.

Model: the demo's shape (edgeres/recipes/demo.yaml): se_resnet18, 10 digit classes, 1 grey channel, 64x64,
pruned to half its MACs (L2 magnitude), exported with a fixed batch of 1 and quantized to INT8 by NNCF on 64
digits training images. Its weights are random (torch seed 0, no training): latency does not depend on weight
values, and predictions are compared between two paths through the same weights. `--ir PATH` measures an
existing INT8 IR instead (e.g. the demo's runs/demo/export/model.int8.xml, trained).

Contenders, all in this one process, timed in interleaved rounds (benchmarks/method.py):
  engine        Runner(x) on a prepared 1x1x64x64 float32 tensor: the model alone, `edgeres bench`'s engine figure
  engine twin   a second Runner on the same IR: the A/A control
  host e2e      `edgeres bench`'s end-to-end call (edgeres.bench.worker.end_to_end_call): the task's prepare
                (PIL to grey, torch antialiased resize on one thread, normalise in numpy), the Runner, describe
  in-graph e2e  a deploy bundle's own code (export/templates/infer.py, imported from a bundle folder as the device
                runs it: run_model, then classify) on the IR with edgeres.export.preprocess.add_openvino_preprocess
                (fixed 480x640 frame; for an INT8 IR the width pass is an integer matrix product on the uint8
                frame), fed a camera's frame: a writeable uint8 array, as OpenCV's VideoCapture.read() returns
  in-graph e2e, decoded image
                the same fed a read-only frame (np.asarray of a PIL image), which OpenVINO copies before it runs
Ratios (paired by round): host e2e / engine, in-graph e2e / engine (the goal: <= 1.3), host e2e / in-graph e2e.
Agreement: verify_preprocess on 64 digits test images shown as 640x480 frames (top-1 agreement, cosine), and the
graph's resized pixels against the host path's (edgeres.export.preprocess.resized_pixels), in grey levels.
Memory: peak RSS of a lean process (`python -I`, running the bundle's infer.py, which imports numpy, PIL and
openvino) on the in-graph IR and the frame, and of one running infer.py's PIL/numpy preprocessing in front of the
original IR, for comparison; both report their top-1 class.

Usage: python benchmarks/preprocess.py [--threads 2] [--runs 2000] [--rounds 40] [--max-seconds 120] [--ir PATH]
       [--workdir DIR] [--quick] [--table-only]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import method
from edgeres.data import DataConfig, load_data
from edgeres.export.preprocess import add_openvino_preprocess, read_preprocess, resized_pixels, verify_preprocess

NAME = "preprocess"
ARCH, SIZE, CLASSES, PRUNE_MACS = "se_resnet18", 64, 10, 0.5
FRAME = (480, 640)  # (height, width): VGA
GOAL = 1.3
AGREEMENT_FRAMES = 64
LEAN_CALLS = 20

# The lean process: a deploy bundle's infer.py on the device, importing what it imports and nothing else.
# Runs with `python -I` (no site packages of the user, no current folder on sys.path).
LEAN = r"""
import importlib.util, json, sys
from pathlib import Path

def rss(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

job = json.loads(sys.argv[1])
baseline = rss("VmRSS")
spec = importlib.util.spec_from_file_location("infer", job["infer"])
infer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(infer)
meta = job["meta"]
model = infer.OpenVinoModel(Path(job["xml"]), meta, None, job["threads"])
image = infer.open_image(Path(job["frame"]))
prepare = infer.frame if job["in_graph"] else infer.resized
for _ in range(job["calls"]):
    x, context = prepare(image, meta["input"])
    top1 = infer.classify(infer.run_model(model, x[None]), [context], meta)[0]["class_id"]
print(json.dumps({"baseline_mb": round(baseline, 1), "peak_mb": round(rss("VmHWM"), 1), "top1": top1,
                  "imported": {m: m in sys.modules for m in ("torch", "edgeres", "onnxruntime", "openvino")}}))
"""


# ---------------------------------------------------------------- artifacts

def demo_ir(work: Path) -> Path:
    """The demo-shaped INT8 IR (random weights, pruned to half the MACs) under `work`."""
    import torch

    from edgeres.compress.prune import PruneConfig, prune
    from edgeres.export.openvino.convert import export_openvino
    from edgeres.export.openvino.quantize import quantize_openvino
    from edgeres.meta import ModelMeta
    from edgeres.models import create

    torch.manual_seed(0)
    model = create(ARCH, num_classes=CLASSES, in_chans=1).eval()
    prune(model, (1, SIZE, SIZE), PruneConfig(target="macs", amount=PRUNE_MACS, importance="l2"))
    bundle = digits()
    meta = ModelMeta(arch=ARCH, num_classes=CLASSES, in_chans=1, img_size=SIZE, mean=tuple(bundle.mean),
                     std=tuple(bundle.std), class_names=list(bundle.class_names))
    export_openvino(model, meta, work / "model.fp32.xml", dynamic_batch=False)
    calibration = [x[i:i + 1] for x, _ in bundle.batches("train", 64, limit=64) for i in range(len(x))]
    quantize_openvino(work / "model.fp32.xml", calibration, work / "model.int8.xml")
    return work / "model.int8.xml"


def digits():
    return load_data(DataConfig("digits", img_size=SIZE))


def frames(n: int, hw: tuple[int, int] = FRAME) -> list[np.ndarray]:
    """`n` digits test images as uint8 RGB camera frames of size hw (bicubic upscale: another filter than the
    model's resize, as a camera would show the scene)."""
    bundle = digits()
    images = np.concatenate([x for x, _ in bundle.batches("test", n, limit=n)])
    mean, std = (np.asarray(v, np.float32)[:, None, None] for v in (bundle.mean, bundle.std))
    grey = np.clip((images * std + mean) * 255, 0, 255).round().astype(np.uint8)[:, 0]
    return [np.asarray(Image.fromarray(g).convert("RGB").resize(hw[::-1], Image.BICUBIC)) for g in grey]


# ---------------------------------------------------------------- timing

def bundle_code(work: Path, framed: Path, spec: dict[str, Any], threads: int) -> tuple[Any, Any, dict[str, Any]]:
    """The bundle's infer.py (with the letterbox.py it imports, as `edgeres deploy` copies them) imported from a
    folder under `work`, the OpenVinoModel it builds for `framed`, and the meta.json fields it reads."""
    import importlib.util
    import shutil

    from edgeres.deploy.templates import template_path
    from edgeres.tasks.classify_predict import TOP_K

    folder = work / "bundle"
    folder.mkdir(exist_ok=True)
    shutil.copyfile(template_path("infer.py"), folder / "infer.py")
    shutil.copyfile(Path(__file__).resolve().parents[1] / "edgeres" / "letterbox.py", folder / "letterbox.py")
    loader = importlib.util.spec_from_file_location("bundle_infer", folder / "infer.py")
    infer = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(infer)
    meta = {"task": "classification", "precision": "int8", "input": spec, "class_names": digits().class_names,
            "postprocess": {"top_k": TOP_K}}
    return infer, infer.OpenVinoModel(framed, meta, None, threads), meta


def contenders(ir: Path, framed: Path, frame: np.ndarray, threads: int,
               work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The timed calls by name, and what each path predicts for `frame`."""
    from edgeres import runtime
    from edgeres.bench.worker import end_to_end_call
    from edgeres.tasks import get_task

    runner, twin = runtime.load(ir, threads=threads), runtime.load(ir, threads=threads)
    task, meta = get_task(runner.meta.task), runner.meta
    x, _ = task.prepare(Image.fromarray(frame), meta)
    x = np.ascontiguousarray(x[None])
    infer, model, bundle_meta = bundle_code(work, framed, read_preprocess(framed), threads)
    camera, decoded = np.array(frame), frame
    assert camera.flags.writeable and not decoded.flags.writeable
    host = end_to_end_call(runner, frame)

    def in_graph(f: np.ndarray) -> Any:  # what a camera loop on the device calls per frame
        return lambda: infer.classify(infer.run_model(model, f[None]), [None], bundle_meta)

    fns = {"engine": lambda: runner(x), "engine twin": lambda: twin(x), "host e2e": host,
           "in-graph e2e": in_graph(camera), "in-graph e2e, decoded image": in_graph(decoded)}
    return fns, {"runner": runner.info.to_dict(), "bundle_runner": model.info, "host_prediction": host()[0]["class"],
                 "in_graph_prediction": in_graph(camera)()[0]["class"], "bundle_meta": bundle_meta}


def resize_error(ir: Path, framed: Path, shown: list[np.ndarray], hint: str) -> dict[str, Any]:
    """|the graph's resized pixels - the host path's (PIL's L, torch's antialiased bilinear)| in grey levels, with
    the precision hint the timed calls run."""
    from edgeres import runtime
    from edgeres.tasks import get_task

    meta = runtime.load(ir).meta
    task = get_task(meta.task)
    mean, std = (np.asarray(v, np.float32)[:, None, None] for v in (meta.mean, meta.std))
    host = np.stack([task.prepare(Image.fromarray(f), meta)[0] for f in shown]) * std + mean
    error = np.abs(resized_pixels(framed, shown, hint) - host * 255)
    return {"max": float(error.max()), "mean": float(error.mean()), "hint": hint, "frames": len(shown)}


def lean_memory(infer_py: Path, xml: Path, frame_png: Path, meta: dict[str, Any], threads: int,
                in_graph: bool) -> dict[str, Any]:
    """Peak RSS of a fresh `python -I` process running the bundle's infer.py on `xml`: the frame as it is (in-graph
    preprocessing), or infer.py's own PIL/numpy resize and normalisation in front of the original IR."""
    job = {"infer": str(infer_py), "xml": str(xml), "frame": str(frame_png), "threads": threads, "calls": LEAN_CALLS,
           "in_graph": in_graph, "meta": meta}
    res = subprocess.run([sys.executable, "-I", "-c", LEAN, json.dumps(job)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if res.returncode != 0:
        raise SystemExit(f"lean process failed: {res.stderr.strip().splitlines()[-1:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    ir = Path(args.ir) if args.ir else None
    if ir is None:
        print(f"building the demo-shaped INT8 IR (random weights) in {work} ...", flush=True)
        ir = demo_ir(work)
    framed = work / "frames.int8.xml"
    spec = add_openvino_preprocess(ir, framed, frame=FRAME)
    shown = frames(max(args.agreement_frames, 1))
    agreement = verify_preprocess(ir, framed, frames=shown[:args.agreement_frames])
    fns, predictions = contenders(ir, framed, shown[0], args.threads, work)
    pixels = resize_error(ir, framed, shown[:args.agreement_frames],
                          predictions["runner"]["extra"]["inference_precision_hint"])
    print(f"timing {len(fns)} contenders in {args.rounds} interleaved rounds ...", flush=True)
    samples, load = method.timed(fns, args, tied=[list(fns)])
    Image.fromarray(shown[0]).save(work / "frame.png")
    infer_py, meta = work / "bundle" / "infer.py", predictions.pop("bundle_meta")
    memory = {"in_graph": lean_memory(infer_py, framed, work / "frame.png", meta, args.threads, True),
              "host_preprocessing": lean_memory(infer_py, ir, work / "frame.png", meta, args.threads, False)}
    ratios = {"host_e2e_over_engine": method.compare(samples["host e2e"], samples["engine"], args.rounds),
              "in_graph_e2e_over_engine": method.compare(samples["in-graph e2e"], samples["engine"], args.rounds),
              "host_e2e_over_in_graph_e2e": method.compare(samples["host e2e"], samples["in-graph e2e"],
                                                           args.rounds),
              "decoded_over_camera_frame": method.compare(samples["in-graph e2e, decoded image"],
                                                          samples["in-graph e2e"], args.rounds)}
    return {"ir": str(ir), "input": spec, "load": load, "agreement": agreement, "resize_error": pixels,
            **predictions, "memory": memory,
            "latency": {name: method.distribution(s) for name, s in samples.items()}, "ratios": ratios,
            "control": method.control(samples, "engine", "engine twin", args.rounds),
            "goal_met": ratios["in_graph_e2e_over_engine"]["ratio_p50"] <= GOAL}


# ---------------------------------------------------------------- report

def markdown(result: dict[str, Any]) -> str:
    lat, r, a, mem = result["latency"], result["ratios"], result["agreement"], result["memory"]
    rows = [("engine (prepared 1x1x64x64 tensor)", "engine", None),
            ("end to end, host preprocessing (PIL + torch resize + numpy)", "host e2e", "host_e2e_over_engine"),
            ("end to end, preprocessing in the graph (the bundle's infer.py, a camera's frame)", "in-graph e2e",
             "in_graph_e2e_over_engine")]
    lines = ["| path, 640x480 uint8 frame | p50 / p90 / p99 ms | / engine p50, paired by round (95% CI) | runs |",
             "|---|---|---|---|"]
    for label, key, ratio in rows:
        d = lat[key]
        lines.append(f"| {label} | {d['p50_ms']:.3f} / {d['p90_ms']:.3f} / {d['p99_ms']:.3f} | "
                     f"{method.ci(r[ratio]) if ratio else '1'} | {d['runs']} |")
    decoded = lat.get("in-graph e2e, decoded image")
    if decoded:  # results saved before this contender was timed lack it
        lines.append(f"| the same, fed a read-only frame (np.asarray of a PIL image: OpenVINO copies it) | "
                     f"{decoded['p50_ms']:.3f} / {decoded['p90_ms']:.3f} / {decoded['p99_ms']:.3f} | "
                     f"{method.ci(r['decoded_over_camera_frame'])} x the camera frame's | {decoded['runs']} |")
    lean = mem["in_graph"]
    lines += ["", f"In-graph end to end is {method.ci(r['host_e2e_over_in_graph_e2e'], '.2f')}x faster than host "
              f"preprocessing; goal in-graph e2e <= {GOAL}x engine: {'met' if result['goal_met'] else 'NOT met'}. "
              f"Predictions on {a['frames']} frames: top-1 agreement {a['top1_agreement']:.3f}, mean cosine "
              f"{a['cosine_mean']:.5f} (tolerance {a['precision']}: {'pass' if not a['failures'] else 'FAIL'}). "
              f"{_resize_note(result.get('resize_error'))}"
              f"Peak RSS of the bundle's infer.py in a lean process (torch imported: {lean['imported']['torch']}): "
              f"{lean['peak_mb']:.0f} MB in-graph, {mem['host_preprocessing']['peak_mb']:.0f} MB with PIL/numpy "
              f"preprocessing (top-1 class {lean.get('top1')} and {mem['host_preprocessing'].get('top1')}). "
              f"Model: {result['model']}.", "", method.footer(result)]
    return "\n".join(lines)


def _resize_note(error: dict[str, Any] | None) -> str:
    if not error:  # a result saved before this was measured
        return ""
    return (f"The graph's width pass runs in integers on the uint8 frame (7-bit int8 weights); its "
            f"resized pixels differ from the host path's by at most {error['max']:.2f} grey levels (mean "
            f"{error['mean']:.3f}; {error['hint']} hint; PIL rounds L to integers, the graph does not). ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    method.add_arguments(ap, rounds=40, runs=2000, warmup=50, max_seconds=120.0)
    ap.add_argument("--ir", help="an INT8 IR to measure (default: build the demo-shaped one, random weights)")
    ap.add_argument("--workdir", help="keep the built files here (default: a temporary folder)")
    ap.add_argument("--agreement-frames", type=int, default=AGREEMENT_FRAMES)
    args = method.quick(ap.parse_args(), rounds=4, runs=40, warmup=5, max_seconds=10.0, agreement_frames=8)
    if args.table_only:
        return method.rerender(NAME, args, markdown)
    import torch

    # The host path at its best: its torch resize on one thread. With two, its OpenMP threads and OpenVINO's
    # fight for the 2 cores (prepare alone measured 16 ms instead of 0.6 ms on a loaded VM).
    torch.set_num_threads(1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeres-bench-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        fields = measure(args, work)
    model = (f"{args.ir}" if args.ir else f"{ARCH} 1x{SIZE}x{SIZE}, {CLASSES} classes, pruned to {PRUNE_MACS:.0%} "
             "MACs, random weights (torch seed 0), NNCF INT8 on 64 digits images")
    result = method.record(NAME, args, start, model=model, frame=list(FRAME), goal=GOAL, **fields)
    method.finish(NAME, result, args, markdown)


if __name__ == "__main__":
    main()
