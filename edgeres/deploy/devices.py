"""Device profiles: what a target computes and moves per second, what it runs, and how it is set up.

A profile is `devices/<name>.yaml` (or a user's YAML file), validated on load; `host` is this machine,
detected from /proc and /sys. Compute peaks are dense TFLOPS (float) or TOPS (int8) per engine and precision;
`dla` is per DLA core, since TensorRT places a network on one core. Every vendor figure in devices/ cites
its data sheet in a comment on its line; derived figures say how they were derived.
"""
from __future__ import annotations

import functools
import os
import platform
import time
from pathlib import Path
from typing import Annotated, Literal, Optional, get_args

from pydantic import Field, field_validator, model_validator

from edgeres.deploy.presets import PLAIN_NAME, Strict, list_presets, load_preset, load_yaml_model, resolve
from edgeres.deploy.resources import data_dir
from edgeres.errors import UserInputError

HOST = "host"
Precision = Literal["fp32", "fp16", "bf16", "int8"]
Engine = Literal["gpu", "dla", "cpu"]
Peak = Annotated[float, Field(gt=0, le=100_000)]  # dense TFLOPS or TOPS
# Instruction-set features that change a CPU's peak, by their Linux /proc/cpuinfo names (Arm's renamed:
# asimd -> neon, asimdhp -> fp16, asimddp -> dotprod).
Isa = Literal["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
              "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16",
              "neon", "fp16", "dotprod", "i8mm", "bf16", "sve", "sve2"]
_ARM_FLAGS = {"asimd": "neon", "asimdhp": "fp16", "asimddp": "dotprod", "i8mm": "i8mm", "bf16": "bf16",
              "sve": "sve", "sve2": "sve2"}
# The documented profile whose efficiency factors (and preset) the detected host borrows, by machine type.
_HOST_REFERENCE = {"x86_64": "x86-cpu", "amd64": "x86-cpu", "aarch64": "raspberry-pi-5", "arm64": "raspberry-pi-5"}


class Memory(Strict):
    size_gb: float = Field(gt=0)
    bandwidth_gbps: float = Field(gt=0)


class Cpu(Strict):
    model: str
    cores: int = Field(ge=1)
    clock_ghz: Optional[float] = Field(None, gt=0, le=10)
    isa: list[Isa] = []


class Software(Strict):
    jetpack: Optional[str] = None
    cuda: Optional[str] = None
    tensorrt: Optional[str] = None
    max_onnx_opset: Optional[int] = Field(None, ge=7, le=30)  # the highest opset the device's TensorRT parses
    onnxruntime: Optional[str] = None   # a version or pip specifier for the bundle's requirements; null: not used
    openvino: Optional[str] = None


class PowerMode(Strict):
    name: str
    watts: Optional[float] = Field(None, gt=0)  # null: no fixed budget (MAXN modes)


class Efficiency(Strict):
    """The roofline's factors (edgeres.deploy.estimate): achieved / peak compute and memory bandwidth.

    Factors, not fractions: at batch 1 caches can beat the DRAM bandwidth a profile states.
    """
    compute: float = Field(gt=0, le=10)
    memory: float = Field(gt=0, le=10)
    overhead_us: float = Field(ge=0, le=100_000)  # fixed cost per executed layer


class Device(Strict):
    name: str
    description: str
    kind: Literal["jetson", "cpu"]
    preset: str                              # export/presets/<preset>.yaml
    memory: Memory
    compute: dict[Engine, dict[Precision, Peak]]
    cpu: Cpu
    precisions: list[Precision] = Field(min_length=1)
    dla_cores: int = Field(ge=0)
    software: Software
    power_modes: list[PowerMode] = []
    efficiency: dict[Precision, Efficiency]
    notes: list[str] = []                    # how detected or derived figures were obtained

    @field_validator("name", "preset")
    @classmethod
    def _plain(cls, value: str) -> str:
        if not PLAIN_NAME.fullmatch(value):
            raise ValueError("must be a plain name (letters, digits, '.', '_', '-'), not a path")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Device":
        for precision in self.precisions:
            if not any(precision in peaks for peaks in self.compute.values()):
                raise ValueError(f"precisions: {precision} has no peak under compute")
            if precision not in self.efficiency:
                raise ValueError(f"efficiency: {precision} (listed in precisions) has no factors")
        if "cpu" not in self.compute:
            raise ValueError("compute: every device has a cpu engine; give its peaks")
        if (self.dla_cores > 0) != ("dla" in self.compute):
            raise ValueError(f"dla_cores: {self.dla_cores} DLA cores, but compute "
                             f"{'has' if 'dla' in self.compute else 'has no'} a dla engine")
        if self.kind == "jetson":
            if "gpu" not in self.compute:
                raise ValueError("compute: a jetson needs a gpu engine")
            needed = ("jetpack", "cuda", "tensorrt", "max_onnx_opset")
            missing = [f for f in needed if getattr(self.software, f) is None]
            if missing:
                raise ValueError(f"software: a jetson needs {', '.join(missing)} (TensorRT builds its engines)")
        return self

    @property
    def main_engine(self) -> str:
        """Where the preset's runtime runs a model: the GPU where there is one, otherwise the CPU."""
        return "gpu" if "gpu" in self.compute else "cpu"

    def peak(self, precision: str, engine: str | None = None) -> float:
        """Dense peak in TFLOPS (float) or TOPS (int8) of `engine` (default: the main engine) at `precision`."""
        engine = engine or self.main_engine
        peaks = self.compute.get(engine)  # type: ignore[call-overload]
        if peaks is None or precision not in peaks:
            have = {e: list(p) for e, p in self.compute.items()}
            raise UserInputError(f"{self.name} has no {engine} peak for {precision}; it has {have}")
        return peaks[precision]  # type: ignore[index]


def list_devices() -> list[str]:
    """Names of the profiles in devices/ (`host`, this machine, is always available too)."""
    return sorted(p.stem for p in data_dir("devices").glob("*.yaml"))


def load_device(name_or_path: str | Path) -> Device:
    """A profile by name (devices/<name>.yaml), `host` (this machine, detected) or a user's YAML file."""
    if str(name_or_path) == HOST:
        return host_device()
    folder = data_dir("devices")
    path = resolve(name_or_path, folder, lambda: [*list_devices(), HOST], "device profile")
    device = load_yaml_model(path, Device, "a device profile in YAML")
    if path.parent == folder and device.name != path.stem:
        raise UserInputError(f"{path}: name: a profile in devices/ is named as its file ({path.stem}), "
                             "so `--device NAME` finds it")
    _check_preset(device, path)
    return device


def _check_preset(device: Device, path: Path) -> None:
    """The device's preset exists, exports only precisions the device runs, at an opset its TensorRT parses."""
    if device.preset not in list_presets():
        raise UserInputError(f"{path}: preset: no export preset by that name; available: {', '.join(list_presets())}")
    preset = load_preset(device.preset)
    extra = [p for p in preset.precisions if p not in device.precisions]
    if extra:
        raise UserInputError(f"{path}: preset: {device.preset} exports {extra}, which this device does not run "
                             f"(precisions: {device.precisions})")
    limit = device.software.max_onnx_opset
    if limit is not None and preset.opset > limit:
        raise UserInputError(f"{path}: preset: {device.preset} exports opset {preset.opset}, above "
                             f"software.max_onnx_opset {limit} (what this device's TensorRT parses)")


@functools.lru_cache(maxsize=1)
def host_device() -> Device:
    """This machine as a CPU device: model, cores, ISA and clock from /proc and /sys, peaks derived, bandwidth measured.

    Peak per core and cycle, from the widest vector unit the flags show (two FMA pipes assumed, as on
    Haswell and later, Zen 2 and later, Cortex-A76/A78): fp32 FLOPs = pipes x lanes x 2. Int8 ops are 4x
    that with AVX-512/AVX VNNI or Arm dot-product (four int8 MACs per 32-bit lane per instruction), 2x without
    (pmaddubsw + pmaddwd: two instructions per four MACs); bf16/fp16 2x with their dot-product or FMA
    instructions; AMX tiles 2048 int8 / 1024 bf16 ops per cycle (Intel's figure). The memory bandwidth is
    measured: the best of 0.3 s of single-threaded numpy copies of twice the last-level cache (read + write
    bytes / time): one core's stream, stable on a quiet machine, lower while other processes load memory.
    Efficiency factors and the preset come from the documented profile of this machine type (x86-cpu).
    """
    blocks = _cpuinfo()
    first = blocks[0] if blocks else {}
    flags = set((first.get("flags") or first.get("Features") or "").split())
    cpus = sorted(os.sched_getaffinity(0))
    physical = _physical_cores(cpus)
    clock, clock_source = _clock_ghz(cpus, blocks)
    isa = sorted({_ARM_FLAGS.get(f, f) for f in flags} & set(get_args(Isa)))
    per_cycle, derivation = _ops_per_cycle(set(isa), first)
    compute = {"cpu": {p: round(physical * clock * ops / 1000, 4) for p, ops in per_cycle.items()}}
    machine = platform.machine().lower()
    reference = load_device(_HOST_REFERENCE.get(machine, "x86-cpu"))
    precisions = [p for p in ("fp32", "fp16", "bf16", "int8") if p in per_cycle]
    size_gb = _memory_gb()
    bandwidth = _copy_bandwidth_gbps(size_gb)
    notes = [f"cores: {len(cpus)} CPUs this process may use (sched_getaffinity), {physical} physical cores "
             "count towards the peak",
             f"clock: {clock:.3f} GHz from {clock_source}",
             f"peak per core and cycle: {derivation}; peak = physical cores x clock x that",
             "memory.bandwidth_gbps: measured, the best of single-threaded numpy copies for 0.3 s of twice the "
             "last-level cache (read + write bytes / time)",
             f"efficiency: the {reference.name} profile's factors (fp32's where it has none for a precision)"]
    return Device(
        name=HOST, description=f"this machine: {_cpu_model(first)}, {len(cpus)} CPUs ({machine})", kind="cpu",
        preset=reference.preset, memory=Memory(size_gb=round(size_gb, 2), bandwidth_gbps=round(bandwidth, 2)),
        compute=compute, cpu=Cpu(model=_cpu_model(first), cores=len(cpus), clock_ghz=round(clock, 3), isa=isa),
        precisions=precisions, dla_cores=0, software=_installed_software(),
        efficiency={p: reference.efficiency.get(p, reference.efficiency["fp32"]) for p in precisions},
        notes=notes)


def _cpuinfo() -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per processor block (the whole file's fields when it has no blocks)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        raise UserInputError("the host profile reads /proc/cpuinfo (Linux); on this system give a device "
                             "profile instead (`edgeres devices` lists them)") from None
    blocks = []
    for chunk in text.strip().split("\n\n"):
        fields = {}
        for line in chunk.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        blocks.append(fields)
    return blocks


def _cpu_model(first: dict[str, str]) -> str:
    for source in (first.get("model name"), _read("/proc/device-tree/model"), platform.processor()):
        if source:
            return source.strip("\x00 ")
    return f"unknown {platform.machine()} CPU"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _physical_cores(cpus: list[int]) -> int:
    """Distinct (package, core) pairs among `cpus`: SMT siblings share one core's vector units."""
    cores = set()
    for cpu in cpus:
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        package, core = _read(f"{topology}/physical_package_id"), _read(f"{topology}/core_id")
        if package is None or core is None:
            return len(cpus)
        cores.add((package.strip(), core.strip()))
    return len(cores) or len(cpus)


def _clock_ghz(cpus: list[int], blocks: list[dict[str, str]]) -> tuple[float, str]:
    """The highest clock of `cpus`, and where it came from."""
    khz = [int(v) for cpu in cpus if (v := _read(f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq"))]
    if khz:
        return max(khz) / 1e6, "/sys cpufreq cpuinfo_max_freq"
    mhz = [float(b["cpu MHz"]) for b in blocks if b.get("cpu MHz")]
    if mhz:
        return max(mhz) / 1000, "/proc/cpuinfo 'cpu MHz' (the current clock; no cpufreq here, turbo may be higher)"
    return 2.0, "nowhere (no cpufreq, no 'cpu MHz'): 2.0 GHz assumed"


def _ops_per_cycle(isa: set[str], first: dict[str, str]) -> tuple[dict[str, float], str]:
    """Peak ops per core and cycle by precision, and how they were derived (see host_device)."""
    zen4 = first.get("vendor_id") == "AuthenticAMD" and first.get("cpu family", "").isdigit() \
        and int(first["cpu family"]) < 0x1A  # Zen 4 runs AVX-512 on 256-bit FMA units; Zen 5 (family 26) does not
    if "avx512f" in isa and not zen4:
        fp32, how = 64.0, "2 FMA pipes x 16 fp32 lanes (AVX-512) x 2"
    elif "avx512f" in isa:
        fp32, how = 32.0, "2 FMA pipes x 8 fp32 lanes x 2 (Zen 4 runs AVX-512 as two 256-bit halves)"
    elif {"avx2", "fma"} <= isa:
        fp32, how = 32.0, "2 FMA pipes x 8 fp32 lanes (AVX2) x 2"
    elif "avx" in isa:
        fp32, how = 16.0, "one 8-lane add + one 8-lane multiply (AVX, no FMA)"
    elif "neon" in isa:
        fp32, how = 16.0, "2 FMA pipes x 4 fp32 lanes (128-bit NEON) x 2"
    else:
        fp32, how = 8.0, "4 fp32 lanes (SSE) x 2"
    ops = {"fp32": fp32}
    dot8 = {"avx512_vnni", "avx_vnni", "dotprod"} & isa
    ops["int8"] = 2048.0 if "amx_int8" in isa else fp32 * (4 if dot8 else 2)
    if {"amx_bf16", "avx512_bf16", "bf16"} & isa:
        ops["bf16"] = 1024.0 if "amx_bf16" in isa else fp32 * 2
    if {"amx_fp16", "avx512_fp16", "fp16"} & isa:
        ops["fp16"] = 1024.0 if "amx_fp16" in isa else fp32 * 2
    extras = ", ".join(f"{p} {v:g}" for p, v in ops.items() if p != "fp32")
    why = "AMX tiles" if "amx_int8" in isa else ("4 int8 MACs per lane: " + "/".join(sorted(dot8)) if dot8
                                                 else "2x: no int8 dot-product instruction")
    return ops, f"fp32 {fp32:g} FLOPs = {how}; {extras} ops (int8: {why})"


def _memory_gb() -> float:
    """Memory this process may use, in GiB: MemTotal, or a smaller cgroup limit."""
    total = next((int(line.split()[1]) * 1024 for line in (_read("/proc/meminfo") or "").splitlines()
                  if line.startswith("MemTotal:")), None)
    limit = (_read("/sys/fs/cgroup/memory.max") or "").strip()
    sizes = [s for s in (total, int(limit) if limit.isdigit() else None) if s]
    if not sizes:
        raise UserInputError("the host profile reads /proc/meminfo (Linux); on this system give a device profile")
    return min(sizes) / 2**30


def _copy_bandwidth_gbps(size_gb: float, seconds: float = 0.3) -> float:
    """Best bandwidth of repeated numpy copies (bytes read + written per second), in GB/s.

    The array is twice the last-level cache (64 MiB at least), so the copy streams from DRAM; the best of
    many short copies is the machine's, not the moments when other processes compete for memory.
    """
    import numpy as np

    nbytes = int(min(max(64 * 2**20, 2 * _last_level_cache_bytes()), size_gb * 2**30 / 16))
    src, dst = np.ones(nbytes // 8), np.zeros(nbytes // 8)  # written once: page faults stay out of the timing
    best, repeats, deadline = float("inf"), 0, time.perf_counter() + seconds
    while repeats < 10 or time.perf_counter() < deadline:
        start = time.perf_counter()
        np.copyto(dst, src)
        best, repeats = min(best, time.perf_counter() - start), repeats + 1
    return 2 * src.nbytes / best / 1e9


def _last_level_cache_bytes() -> int:
    """The largest CPU cache /sys lists ("32768K"), or 0."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = (_read(str(path)) or "").strip().upper()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=0)


def _installed_software() -> Software:
    """The runtimes installed here (the versions a bundle built on this host pins)."""
    from edgeres.artifacts import package_versions

    versions = package_versions(("onnxruntime", "openvino"))
    return Software(onnxruntime=versions.get("onnxruntime"), openvino=versions.get("openvino"))
