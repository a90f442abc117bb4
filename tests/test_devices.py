"""Device profiles and export presets: every profile loads and cites its figures, `host` describes this machine,
a bad profile is refused naming the file and the field (exit 2 from the CLI), presets give a valid ExportConfig,
and a wheel installed into a fresh environment carries devices/ and export/."""
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgeres.deploy.devices import HOST, host_device, list_devices, load_device
from edgeres.deploy.presets import list_presets, load_preset
from edgeres.deploy.resources import data_dir
from edgeres.errors import UserInputError

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"jetson-nano", "jetson-xavier-nx", "jetson-orin-nano", "jetson-agx-orin", "raspberry-pi-5", "x86-cpu"}
# A source comment names a document, or says the figure was derived, stated, measured, fitted or is uncalibrated.
SOURCE_WORDS = ("data sheet", "technical brief", "product brief", "release notes", "operators.md", "support matrix",
                "jetpack archive", "jedec", "derived", "stated", "measured", "fitted", "uncalibrated", "placeholder")
_NUMBER = re.compile(r"(?:^|[:\[,{]\s*|\s-\s+)-?\d+(?:\.\d+)?(?=\s*(?:$|[,\]}]))")


def uncited_figures(text: str) -> list[str]:
    """Lines of a profile holding a number whose comment names no source."""
    bad = []
    for line in text.splitlines():
        value, _, comment = line.partition("#")
        if _NUMBER.search(value.strip()) and not any(w in comment.lower() for w in SOURCE_WORDS):
            bad.append(line)
    return bad


def test_every_profile_loads_with_its_preset():
    names = list_devices()
    assert REQUIRED <= set(names), names
    for name in names:
        device = load_device(name)
        assert device.name == name
        preset = load_preset(device.preset)
        assert set(preset.precisions) <= set(device.precisions), name
        assert device.peak(device.precisions[0]) > 0
        if device.kind == "jetson":
            assert device.software.max_onnx_opset >= preset.opset, name
    assert load_device("jetson-nano").software.max_onnx_opset == 13
    assert "int8" not in load_device("jetson-nano").precisions  # Maxwell: no INT8 in TensorRT


def test_every_figure_cites_its_source():
    assert uncited_figures("  fp32: 0.5   # derived: 2 x 0.25\n  int8: 2\n") == ["  int8: 2"]  # the check bites
    assert uncited_figures("  - {name: MAXN, watts: 10}  # a nice mode\n")  # a comment that names no source
    files = sorted(data_dir("devices").glob("*.yaml"))
    assert files
    for path in files:
        assert uncited_figures(path.read_text()) == [], path.name


def test_host_describes_this_machine():
    host = load_device(HOST)
    assert host is host_device()
    assert host.cpu.cores == len(os.sched_getaffinity(0))
    flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith(("flags", "Features"))).split(":", 1)[1].split())
    for flag in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"):
        assert (flag in host.cpu.isa) == (flag in flags), flag
    mem_kb = int(next(line for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal:")).split()[1])
    assert 0 < host.memory.size_gb <= mem_kb / 2**20 + 0.01
    assert 0.5 < host.memory.bandwidth_gbps < 2000
    assert 0.2 < host.cpu.clock_ghz < 10
    cpu = host.compute["cpu"]
    assert 0.001 < cpu["fp32"] < 1000
    vnni = {"avx512_vnni", "avx_vnni", "asimddp"} & flags
    assert cpu["int8"] / cpu["fp32"] == pytest.approx(4 if vnni else 2, rel=1e-3) or "amx_int8" in flags
    assert ("bf16" in host.precisions) == bool({"avx512_bf16", "amx_bf16", "bf16"} & flags)
    reference = load_device("x86-cpu")
    assert host.preset == reference.preset
    assert host.efficiency["fp32"] == reference.efficiency["fp32"]


BASE = "jetson-agx-orin"
MUTATIONS = {  # (replace, with) in the profile's text, then words the error must hold
    "unknown key": (("dla_cores: 2 ", "turbo: 3\ndla_cores: 2 "), ["top level", "unknown field", "dla_cores"]),
    "negative bandwidth": (("bandwidth_gbps: 204.8", "bandwidth_gbps: -3"),
                           ["memory.bandwidth_gbps", "greater than 0", "got -3"]),
    "unknown precision": (("precisions: [fp32, fp16, int8]", "precisions: [fp32, fp8, int8]"),
                          ["precisions.1", "'fp32', 'fp16', 'bf16' or 'int8'"]),
    "missing field": (("  bandwidth_gbps: 204.8", "  #"), ["memory.bandwidth_gbps", "required"]),
    "unknown engine": (("  gpu:\n", "  tpu:\n"), ["compute.…", "'gpu', 'dla' or 'cpu'"]),
    "negative peak": (("    int8: 85 ", "    int8: -85 "), ["compute.gpu.int8", "greater than 0"]),
    "dla without cores": (("dla_cores: 2 ", "dla_cores: 0 "), ["dla_cores", "dla engine"]),
    "precision without peak": (("precisions: [fp32, fp16, int8]", "precisions: [fp32, fp16, int8, bf16]"),
                               ["precisions", "bf16", "no peak"]),
    "precision without factors": (("  int8: {compute: 0.25", "  bf16: {compute: 0.25"),
                                  ["efficiency", "int8", "no factors"]),
    "opset above TensorRT's": (("max_onnx_opset: 20", "max_onnx_opset: 13"), ["preset", "opset 17", "13"]),
    "no such preset": (("preset: jetson-tensorrt", "preset: nope"), ["preset", "no export preset"]),
    "path as a name": (("preset: jetson-tensorrt", "preset: ../../etc/passwd"), ["preset", "plain name"]),
}


def _bad_profile(tmp_path: Path, case: str) -> Path:
    (old, new), _ = MUTATIONS[case]
    text = (data_dir("devices") / f"{BASE}.yaml").read_text()
    assert old in text, case
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize("case", list(MUTATIONS))
def test_bad_profile_names_the_field(tmp_path, case):
    path = _bad_profile(tmp_path, case)
    with pytest.raises(UserInputError) as info:
        load_device(str(path))
    message = str(info.value)
    assert message.startswith(str(path)), message
    for word in MUTATIONS[case][1]:
        assert word in message, (word, message)
    assert "turbo" not in message  # the file's own unknown key is not repeated


def test_user_profile_loads_and_unknown_names_list_the_available(tmp_path):
    mine = tmp_path / "my-board.yaml"
    mine.write_text((data_dir("devices") / "raspberry-pi-5.yaml").read_text().replace("name: raspberry-pi-5",
                                                                                     "name: my-board"))
    assert load_device(str(mine)).name == "my-board"
    with pytest.raises(UserInputError, match="jetson-orin-nano.*host"):
        load_device("jetson-orin-nanoo")



def test_cli_lists_shows_and_refuses(edgeres, tmp_path):
    code, out = edgeres("devices")
    assert code == 0, out
    for name in [*REQUIRED, HOST]:
        assert name in out
    assert "10.3 / 20" in out and "8.2.1 / 13" in out  # TensorRT / opset column
    code, out = edgeres("devices", "jetson-agx-orin")
    assert code == 0 and "peak dla (per core)" in out and "26.25" in out, out
    code, out = edgeres("devices", HOST)
    assert code == 0 and "measured" in out, out
    code, out = edgeres("devices", _bad_profile(tmp_path, "negative bandwidth"))
    assert code == 2 and "memory.bandwidth_gbps" in out and "Traceback" not in out, out
    code, out = edgeres("devices", "nosuch")
    assert code == 2 and "x86-cpu" in out and "Traceback" not in out, out


def test_presets_give_export_configs(tmp_path):
    assert {"jetson-tensorrt", "jetson-nano-tensorrt", "raspberry-pi", "x86-cpu"} <= set(list_presets())
    trt = load_preset("jetson-tensorrt").export_config()
    assert (trt.formats, trt.opset, trt.trt_max_batch, trt.trt_workspace_mb) == (("tensorrt",), 17, 8, 1024)
    assert trt.nms is False  # a classifier: the exporter refuses NMS without detections
    assert load_preset("jetson-tensorrt").export_config(detector=True).nms is True
    nano = load_preset("jetson-nano-tensorrt").export_config(precisions=("fp16",))
    assert (nano.opset, nano.precisions, nano.trt_workspace_mb) == (13, ("fp16",), 512)
    cpu = load_preset("x86-cpu").export_config(calib_size=7)
    assert (cpu.formats, cpu.dynamic_batch, cpu.calib_size) == (("openvino",), False, 7)
    assert load_preset("raspberry-pi").providers == ["CPUExecutionProvider"]
    bad = tmp_path / "bad-preset.yaml"
    text = (data_dir("export") / "presets" / "x86-cpu.yaml").read_text()
    bad.write_text(text.replace("formats: [openvino]", "formats: [onnx]"))
    with pytest.raises(UserInputError, match=r"bad-preset.yaml: formats: backend openvino runs openvino"):
        load_preset(str(bad))
    bad.write_text(text.replace("max_batch: 1", "max_batch: 4"))
    with pytest.raises(UserInputError, match="max_batch: a fixed-batch"):
        load_preset(str(bad))


# Run by the fresh environment's python: where the installed edgeres finds its data, and what is there.
_INSTALLED = """
import json
from pathlib import Path
import edgeres
from edgeres.deploy.devices import list_devices, load_device
from edgeres.deploy.resources import data_dir
roots = {kind: data_dir(kind) for kind in ("devices", "export")}
print(json.dumps({
    "package": str(Path(edgeres.__file__).parent), "roots": {k: str(d) for k, d in roots.items()},
    "files": {k: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
              for k, d in roots.items()},  # pip compiles the templates' .py on install: not from the wheel
    "loaded": [load_device(name).name for name in list_devices()]}))
"""


@pytest.mark.slow  # builds a wheel (~10 s)
def test_wheel_carries_devices_and_export(tmp_path):
    from lean_env import lean_python

    src = tmp_path / "src"  # a copy: the build leaves build/ and *.egg-info where it runs
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("edgeres", "devices", "export"):
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=ignore)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", tmp_path / "dist", src], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("edgeres-*.whl"))
    assert not [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".pyc")]
    python = lean_python(tmp_path / "venv", ("pyyaml", "pydantic"))
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q",
                    wheel], check=True, capture_output=True)
    res = subprocess.run([python, "-I", "-c", _INSTALLED], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    found = json.loads(res.stdout)
    package = Path(found["package"]).resolve()
    assert not package.is_relative_to(ROOT) and package.is_relative_to((tmp_path / "venv").resolve())
    for kind in ("devices", "export"):
        assert Path(found["roots"][kind]).resolve() == package / "_data" / kind
        expected = sorted(str(p.relative_to(ROOT / kind)) for p in (ROOT / kind).rglob("*")
                          if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith("."))
        assert found["files"][kind] == expected, kind
    assert set(found["loaded"]) == set(list_devices())
