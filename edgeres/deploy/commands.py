"""The deployment commands (`edgeres devices`, `edgeres estimate`, `edgeres deploy`), registered on the main app.

Each command only parses, calls one library function and prints; heavy imports stay inside the functions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("devices")(devices_cmd)
    app.command("estimate")(estimate_cmd)
    app.command("deploy")(deploy_cmd)


# --- devices (owned by the devices work) ---
def devices_cmd(
    device: Optional[str] = typer.Argument(None, help="Show one device: a profile name, 'host' (this machine, "
                                                      "detected) or a YAML file. Default: list them all."),
) -> None:
    """List the device profiles (peaks, memory, TensorRT), or show one in full."""
    from edgeres.deploy.devices import HOST, list_devices, load_device
    from edgeres.errors import UserInputError
    from edgeres.ui import print_table

    if device is not None:
        d = load_device(device)
        print_table(f"{d.name}: {d.description}", ["field", "value"], _device_details(d))
        return
    rows = [_device_row(load_device(name)) for name in list_devices()]
    try:
        rows.append(_device_row(load_device(HOST)))
    except UserInputError as e:  # no /proc here: the profiles are still worth listing
        rows.append((HOST, "cpu", str(e), None, None, None, None, None))
    print_table("device profiles (dense TFLOPS / TOPS of the main engine; DLA per core)",
                ["name", "kind", "memory", "fp32", "fp16", "int8", "TensorRT / opset", "preset"], rows)


def _device_row(d) -> tuple:  # d: edgeres.deploy.devices.Device
    def peak(p: str) -> str:
        main = d.compute[d.main_engine].get(p)
        dla = d.compute.get("dla", {}).get(p)
        cells = ([f"{main:g}"] if main else []) + ([f"DLA {dla:g}"] if dla else [])
        return ", ".join(cells) or "-"

    trt = f"{d.software.tensorrt} / {d.software.max_onnx_opset}" if d.software.tensorrt else "-"
    memory = f"{d.memory.size_gb:g} GB, {d.memory.bandwidth_gbps:g} GB/s"
    return (d.name, d.kind, memory, peak("fp32"), peak("fp16"), peak("int8"), trt, d.preset)


def _device_details(d) -> list[tuple[str, str]]:
    def listed(pairs: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in pairs.items() if v is not None) or "-"

    rows = [("kind / preset", f"{d.kind} / {d.preset}"),
            ("cpu", f"{d.cpu.model}; {d.cpu.cores} cores" + (f" at {d.cpu.clock_ghz:g} GHz" if d.cpu.clock_ghz else "")
             + (f"; {', '.join(d.cpu.isa)}" if d.cpu.isa else "")),
            ("memory", f"{d.memory.size_gb:g} GB, {d.memory.bandwidth_gbps:g} GB/s")]
    rows += [(f"peak {engine}" + (" (per core)" if engine == "dla" else ""),
              listed({p: f"{v:g}" for p, v in peaks.items()})) for engine, peaks in d.compute.items()]
    rows += [("precisions", ", ".join(d.precisions)), ("DLA cores", str(d.dla_cores)),
             ("software", listed(d.software.model_dump())),
             ("power modes", ", ".join(f"{m.name} ({f'{m.watts:g} W' if m.watts else 'uncapped'})"
                                       for m in d.power_modes) or "-")]
    rows += [(f"efficiency {p}", f"compute {e.compute:g}, memory {e.memory:g}, overhead {e.overhead_us:g} us")
             for p, e in d.efficiency.items()]
    return rows + [("note", note) for note in d.notes]


# --- estimate (owned by the estimate work) ---
def estimate_cmd(
    artifact: Path = typer.Argument(..., help="An exported graph: a .onnx file or an OpenVINO .xml."),
    device: str = typer.Option(..., "--device", help="A profile name (see `edgeres devices`), `host`, or a YAML file."),
    batch: Optional[int] = typer.Option(None, help="Batch size of a dynamic-batch graph (default 1)."),
    layers: int = typer.Option(10, min=0, help="Show the layers with the largest estimated time, this many."),
    engine: Optional[str] = typer.Option(None, help="gpu, dla or cpu (default: the GPU where there is one)."),
    precision: Optional[str] = typer.Option(None, help="fp32 or fp16 for the layers not quantized (default: as "
                                                       "stored; fp16 for what TensorRT builds in fp16)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the whole estimate, every layer, here."),
) -> None:
    """Roofline latency estimate of an exported graph on a device profile: an estimate, not a measurement."""
    from edgeres.artifacts import write_json
    from edgeres.deploy.estimate import estimate
    from edgeres.ui import console, print_table, stdout

    result = estimate(artifact, device, batch=batch, engine=engine, precision=precision)
    columns, rows = result.rows(layers)
    print_table(result.title(), columns, rows)
    stdout.print(f"estimated total: {result.total_ms:.3f} ms (an estimate from the profile's peaks, bandwidth "
                 "and efficiency factors; measure on the device to know)", highlight=False)
    if json_out:
        console.print(f"wrote {write_json(json_out, result.to_dict())}", highlight=False)


# --- deploy (owned by the bundle work) ---
def _frame(text: Optional[str]) -> Optional[tuple[int, int]]:
    """'640x480' (width x height, as cameras name it) to (height, width)."""
    from edgeres.errors import UserInputError

    if text is None:
        return None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserInputError(f"--frame must be WIDTHxHEIGHT in pixels, e.g. 640x480, got {text!r}") from None
    return height, width


def deploy_cmd(
    source: Path = typer.Argument(..., help="A checkpoint, an export folder, or an exported .onnx/.xml file."),
    device: str = typer.Option(..., "--device", help="A profile name (see `edgeres devices`), `host`, or a YAML file."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the bundle (created; a previous bundle is replaced)."),
    precision: Optional[str] = typer.Option(None, help="fp32, fp16 or int8 (default: the device preset's first)."),
    frame: Optional[str] = typer.Option(None, help="Camera frame size WIDTHxHEIGHT the graph takes (in-graph "
                                                   "preprocessing; a detector needs it). Default: any size."),
    preprocess: Optional[bool] = typer.Option(None, "--preprocess/--no-preprocess",
                                              help="Resize and normalise inside the graph (default: the preset's)."),
    golden: int = typer.Option(4, help="Golden inputs the bundle checks itself with on the device."),
    measure: bool = typer.Option(True, help="Time the bundle's model on this host for its README."),
    archive: bool = typer.Option(False, help="Also write OUT.tar.gz."),
) -> None:
    """Write a deployment bundle for a device: model, meta.json, infer.py, build scripts, golden checks, README."""
    from edgeres.deploy.bundle import DeployConfig, deploy
    from edgeres.ui import console, print_table

    config = DeployConfig(device=device, precision=precision, frame=_frame(frame), preprocess=preprocess,
                          golden=golden, measure=measure, archive=archive)
    result = deploy(source, out, config, progress=lambda msg: console.print(f"[dim]{msg}[/dim]"))
    rows = [("bundle", result["out"]), ("device", result["device"]), ("runtime", result["backend"]),
            ("precision", result["precision"]), ("model", result["model"])]
    rows += [(k.replace("_", " "), str(v)) for k, v in result["measured"].items()]
    if result["archive"]:
        rows.append(("archive", result["archive"]))
    print_table("deploy bundle", ["", ""], rows)
