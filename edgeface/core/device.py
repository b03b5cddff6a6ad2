"""What machine is this? One device vocabulary, and the facts a benchmark records about it.

``detect_device`` names the kind of machine in the vocabulary the targets, bundles and ``backend="auto"``
use: "x86", "rpi", "jetson", "arm64" (any other ARM board), or the machine name for anything else. The
benchmark snapshot (``device_info``) reports the same word under "kind".

The rest reads CPU, governor, ISA, Raspberry Pi / Jetson state, temperature and power. Every value is read
from the OS (``/proc``, ``/sys``, ``/etc``, the vendor tools where present) and is ``None`` when it could not
be read: a benchmark must never carry a guessed device property. The parsers take the file's *text* so
tests feed them real samples from a Pi or a Jetson.
"""
from __future__ import annotations

import functools
import glob
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

# The device vocabulary (what recipes/targets/*.yaml name in `device:`).
X86, RPI, JETSON, ARM64 = "x86", "rpi", "jetson", "arm64"
DEVICE_KINDS = (X86, RPI, JETSON, ARM64)
X86_MACHINES = ("x86_64", "amd64", "i686", "i386")
DEVICE_TREE_MODEL = ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model")
TEGRA_RELEASE = "/etc/nv_tegra_release"

# ISA features that change which kernels an inference engine picks (int8 dot products, fp16 arithmetic).
X86_FLAGS_OF_NOTE = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
                     "amx_int8", "amx_bf16")
# ARM /proc/cpuinfo "Features": asimdhp = fp16 arithmetic, asimddp = int8 dot product (sdot/udot).
ARM_FLAGS_OF_NOTE = ("asimd", "fphp", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2")

# ARM "CPU part" ids (implementer 0x41 = Arm Ltd), for boards whose cpuinfo has no "model name".
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
             "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
             "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd42": "Cortex-A78AE",
             "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd4b": "Cortex-A78C",
             "0xd40": "Neoverse-V1", "0xd49": "Neoverse-N2"}

# `vcgencmd get_throttled` bits (Raspberry Pi firmware documentation).
THROTTLE_BITS = {0: "under_voltage", 1: "arm_freq_capped", 2: "throttled", 3: "soft_temp_limit",
                 16: "under_voltage_occurred", 17: "arm_freq_capped_occurred", 18: "throttled_occurred",
                 19: "soft_temp_limit_occurred"}

# L4T release -> JetPack (NVIDIA's JetPack archive). Only exact releases are mapped; others stay None.
L4T_TO_JETPACK = {"32.5.0": "4.5", "32.5.1": "4.5.1", "32.5.2": "4.5.1", "32.6.1": "4.6", "32.7.1": "4.6.1",
                  "32.7.2": "4.6.2", "32.7.3": "4.6.3", "32.7.4": "4.6.4", "32.7.5": "4.6.5",
                  "35.1.0": "5.0.2", "35.2.1": "5.1", "35.3.1": "5.1.1", "35.4.1": "5.1.2", "35.5.0": "5.1.3",
                  "35.6.0": "5.1.4", "36.2.0": "6.0 DP", "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2",
                  "36.4.4": "6.2.1"}


def _read(path: str | Path) -> Optional[str]:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return None


def _run(cmd: list[str], timeout: float = 3.0) -> Optional[str]:
    """stdout of a vendor tool, or None when it is absent or fails (many need root)."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


# -- parsers (text in, values out) ------------------------------------------------------------------------
def parse_cpuinfo(text: str) -> dict:
    """CPU model and ISA features of note from /proc/cpuinfo (x86 'flags' or ARM 'Features')."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            fields.setdefault(k.strip().lower(), v.strip())
    model = fields.get("model name")
    if not model and fields.get("cpu part"):
        part = fields["cpu part"].lower()
        model = ARM_PARTS.get(part, f"ARM part {part}")
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    notable = [f for f in X86_FLAGS_OF_NOTE + ARM_FLAGS_OF_NOTE if f in flags]
    board = fields.get("model")  # Pi kernels print "Model : Raspberry Pi ..."; on x86 it is a number
    return {"cpu_model": model, "isa_flags": notable,
            "board_model": board if board and not board.isdigit() else None}


@functools.lru_cache(maxsize=1)
def cpu_isa_flags() -> frozenset[str]:
    """This CPU's ISA features of note (``X86_FLAGS_OF_NOTE`` / ``ARM_FLAGS_OF_NOTE``), read once."""
    return frozenset(parse_cpuinfo(_read("/proc/cpuinfo") or "")["isa_flags"])


def x86_int8_without_vnni(cpuinfo: Optional[str] = None, machine: Optional[str] = None) -> bool:
    """True on an x86 CPU without VNNI (AVX-512 VNNI or AVX-VNNI). There, int8 kernels multiply uint8
    activations by int8 weights with AVX2's vpmaddubsw, which adds each pair of products in int16 and
    saturates when full 8-bit weights meet large activations (255 * 127 * 2 > 32767); VNNI sums straight
    into int32. onnxruntime and OpenVINO both run U8S8 Q/DQ graphs this way."""
    machine = machine if machine is not None else platform.machine()
    if machine.lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    flags = set(parse_cpuinfo(cpuinfo)["isa_flags"]) if cpuinfo is not None else cpu_isa_flags()
    return not flags & {"avx512_vnni", "avx_vnni"}


def parse_device_tree_model(text: Optional[str]) -> Optional[str]:
    """/proc/device-tree/model is NUL-terminated ("Raspberry Pi 4 Model B Rev 1.4\\x00")."""
    if not text:
        return None
    return text.replace("\x00", "").strip() or None


def parse_throttled(text: Optional[str]) -> Optional[dict]:
    """`vcgencmd get_throttled` -> {"raw": "0x50005", "under_voltage": True, ...}."""
    if not text:
        return None
    m = re.search(r"throttled=(0x[0-9a-fA-F]+)", text)
    if not m:
        return None
    value = int(m.group(1), 16)
    out: dict = {"raw": m.group(1)}
    out.update({name: bool(value >> bit & 1) for bit, name in THROTTLE_BITS.items()})
    return out


def parse_vcgencmd_temp(text: Optional[str]) -> Optional[float]:
    m = re.search(r"temp=([-\d.]+)", text or "")
    return float(m.group(1)) if m else None


def read_thermal_zones(root: str | Path = "/sys/class/thermal") -> dict[str, float]:
    """{zone type: degrees C} from /sys/class/thermal/thermal_zone*/ (millidegrees in 'temp')."""
    out = {}
    for zone in sorted(glob.glob(os.path.join(str(root), "thermal_zone*"))):
        temp = _read(os.path.join(zone, "temp"))
        kind = (_read(os.path.join(zone, "type")) or os.path.basename(zone)).strip()
        try:
            out[kind] = round(int(temp.strip()) / 1000.0, 1)
        except (AttributeError, ValueError):
            continue  # some zones refuse reads (EINVAL) on Jetsons
    return out


def parse_tegra_release(text: Optional[str]) -> Optional[str]:
    """/etc/nv_tegra_release '# R35 (release), REVISION: 4.1, ...' -> '35.4.1'."""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text or "")
    if not m:
        return None
    rev = m.group(2)
    if rev.count(".") == 0:
        rev += ".0"
    return f"{m.group(1)}.{rev}"


def parse_nvpmodel(text: Optional[str]) -> Optional[dict]:
    """`nvpmodel -q` -> {"name": "15W", "id": 0}; warning lines ('NVPM WARN: ...') are ignored."""
    m = re.search(r"NV Power Mode:\s*(\S.*)", text or "")
    if not m:
        return None
    rest = (text or "")[m.end():].split()
    mode_id = int(rest[0]) if rest and rest[0].isdigit() else None
    return {"name": m.group(1).strip(), "id": mode_id}


def parse_jetson_clocks_show(text: Optional[str]) -> Optional[bool]:
    """`jetson_clocks --show`: clocks are pinned when every online CPU and the GPU run at MinFreq == MaxFreq."""
    if not text:
        return None
    pairs = re.findall(r"(?:cpu\d+:.*?Online=1.*?|GPU )MinFreq=(\d+) MaxFreq=(\d+)", text)
    if not pairs:
        return None
    return all(lo == hi for lo, hi in pairs)


def jetson_clocks_from_sysfs(cpu_root: str | Path = "/sys/devices/system/cpu") -> Optional[bool]:
    """Without root, `jetson_clocks --show` fails; jetson_clocks pins scaling_min_freq to the maximum."""
    seen = False
    for cpu in sorted(glob.glob(os.path.join(str(cpu_root), "cpu[0-9]*"))):
        lo, hi = (_read(os.path.join(cpu, "cpufreq", "scaling_min_freq")),
                  _read(os.path.join(cpu, "cpufreq", "cpuinfo_max_freq")))
        if lo is None or hi is None:
            continue
        seen = True
        if lo.strip() != hi.strip():
            return False
    return True if seen else None


def parse_tegrastats(line: Optional[str]) -> Optional[dict]:
    """One tegrastats line -> {"rails_mw": {"VDD_IN": 4970, ...}, "temps_c": {"cpu": 47.5, ...}}.

    JetPack 5+ prints 'VDD_IN 4970mW/4970mW'; JetPack 4 prints 'POM_5V_IN 2310/2310' (current/average).
    """
    if not line:
        return None
    rails = {name: int(cur) for name, cur, _avg in
             re.findall(r"\b((?:VDD|POM|VIN|NC)_[A-Z0-9_]+) (\d+)(?:mW)?/(\d+)(?:mW)?", line)}
    temps = {name.lower(): float(t) for name, t in re.findall(r"\b([A-Za-z0-9_]+)@(-?[\d.]+)C\b", line)}
    if not rails and not temps:
        return None
    return {"rails_mw": rails, "temps_c": temps}


def read_ina_power(root: str | Path = "/sys/bus/i2c/drivers") -> Optional[dict]:
    """{rail: mW} from the Jetson INA3221 monitors.

    JetPack 4 (ina3221x, IIO): rail_name_N + in_power N _input (mW).
    JetPack 5/6 (ina3221, hwmon): inN_label + inN_input (mV) * currN_input (mA) / 1000.
    """
    rails: dict[str, float] = {}
    for dev in glob.glob(os.path.join(str(root), "ina3221x", "*", "iio:device*")):
        for name_file in glob.glob(os.path.join(dev, "rail_name_*")):
            n = name_file.rsplit("_", 1)[-1]
            name, power = _read(name_file), _read(os.path.join(dev, f"in_power{n}_input"))
            if name and power and power.strip().lstrip("-").isdigit():
                rails[name.strip()] = float(power.strip())
    for hw in glob.glob(os.path.join(str(root), "ina3221", "*", "hwmon", "hwmon*")):
        for label_file in glob.glob(os.path.join(hw, "in*_label")):
            n = re.search(r"in(\d+)_label$", label_file).group(1)
            label, mv, ma = (_read(label_file), _read(os.path.join(hw, f"in{n}_input")),
                             _read(os.path.join(hw, f"curr{n}_input")))
            try:
                rails[label.strip()] = round(float(mv) * float(ma) / 1000.0, 1)
            except (AttributeError, TypeError, ValueError):
                continue
    return rails or None


def read_tegrastats_once(timeout: float = 3.0) -> Optional[dict]:
    """First line of `tegrastats --interval 200`, parsed (the tool runs until killed)."""
    if shutil.which("tegrastats") is None:
        return None
    try:
        proc = subprocess.Popen(["tegrastats", "--interval", "200"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
    except OSError:
        return None
    try:
        import select

        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
    return parse_tegrastats(line)


def read_governors(cpu_root: str | Path = "/sys/devices/system/cpu") -> dict[str, str]:
    """{cpuN: governor} for every CPU exposing cpufreq."""
    out = {}
    for cpu in sorted(glob.glob(os.path.join(str(cpu_root), "cpu[0-9]*")),
                      key=lambda p: int(re.sub(r"\D", "", os.path.basename(p)))):
        g = _read(os.path.join(cpu, "cpufreq", "scaling_governor"))
        if g:
            out[os.path.basename(cpu)] = g.strip()
    return out


def read_cur_freq_mhz(cpu_root: str | Path = "/sys/devices/system/cpu") -> Optional[float]:
    f = _read(os.path.join(str(cpu_root), "cpu0", "cpufreq", "scaling_cur_freq"))
    try:
        return round(int(f.strip()) / 1000.0, 1)
    except (AttributeError, ValueError):
        return None


def tensorrt_version() -> Optional[str]:
    """The installed TensorRT, from the Python package metadata or the C++ header (no import: it is slow)."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu11"):
            try:
                return version(dist)
            except PackageNotFoundError:
                continue
    except ImportError:
        pass
    for header in glob.glob("/usr/include/*/NvInferVersion.h") + ["/usr/include/NvInferVersion.h"]:
        return parse_nvinfer_version_header(_read(header))
    return None


def parse_nvinfer_version_header(text: Optional[str]) -> Optional[str]:
    parts = [re.search(rf"#define NV_TENSORRT_{k}\s+(\d+)", text or "") for k in ("MAJOR", "MINOR", "PATCH")]
    if not all(parts):
        return None
    return ".".join(p.group(1) for p in parts)


# -- the snapshot ---------------------------------------------------------------------------------------
def classify(machine: str, board: Optional[str], tegra_release: Optional[str]) -> str:
    """The device kind of a machine from what it reports: ``platform.machine()``, its board model (device
    tree, or the Pi kernel's cpuinfo "Model" line) and the text of /etc/nv_tegra_release."""
    board = (board or "").lower()
    if "raspberry pi" in board:
        return RPI
    if tegra_release or "jetson" in board:
        return JETSON
    m = (machine or "").lower()
    if m in X86_MACHINES:
        return X86
    if m in ("aarch64", "arm64") or m.startswith("arm"):
        return ARM64
    return m or "unknown"


def board_model() -> Optional[str]:
    """The board's model from the device tree (ARM boards), or None."""
    for probe in DEVICE_TREE_MODEL:
        model = parse_device_tree_model(_read(probe))
        if model:
            return model
    return None


def detect_device() -> str:
    """The kind of this machine (see the module docstring); ``EDGEFACE_DEVICE`` overrides it (tests, and
    boards the probes do not know)."""
    forced = os.environ.get("EDGEFACE_DEVICE")
    if forced:
        return forced
    machine = platform.machine()
    if machine.lower() in X86_MACHINES:  # no board probes needed (the Predictor asks on every load)
        return X86
    board = board_model() or parse_cpuinfo(_read("/proc/cpuinfo") or "")["board_model"]
    return classify(machine, board, _read(TEGRA_RELEASE))


def _loadavg() -> Optional[list]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def measured_on() -> dict:
    """Where and when a measurement was taken, for the JSON reports that carry figures (eval, quantize):
    the UTC date, the CPU model, its ISA features of note and its core count."""
    import datetime

    cpu = parse_cpuinfo(_read("/proc/cpuinfo") or "")
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
            "cpu_model": cpu["cpu_model"] or platform.processor() or platform.machine(),
            "isa_flags": cpu["isa_flags"], "cpu_count": os.cpu_count()}


def device_info(include_power: bool = True) -> dict:
    """A JSON-able snapshot of the machine; keys absent from a platform are None, never guessed."""
    cpu = parse_cpuinfo(_read("/proc/cpuinfo") or "")
    tree_model = board_model() or cpu["board_model"]
    tegra_text = _read(TEGRA_RELEASE)
    kind = classify(platform.machine(), tree_model, tegra_text)
    governors = read_governors()
    gov_values = sorted(set(governors.values()))
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:
        available = os.cpu_count()
    mem = re.search(r"MemTotal:\s+(\d+) kB", _read("/proc/meminfo") or "")
    info: dict = {
        "kind": kind,
        "hostname": platform.node(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "cpu_model": cpu["cpu_model"],
        "cores": os.cpu_count(),
        "cores_available": available,
        "memory_mb": round(int(mem.group(1)) / 1024) if mem else None,
        "load_average": _loadavg(),
        "governor": gov_values[0] if len(gov_values) == 1 else (", ".join(gov_values) or None),
        "cpu_freq_mhz": read_cur_freq_mhz(),
        "isa_flags": cpu["isa_flags"],
        "board_model": tree_model,
    }
    thermal = read_thermal_zones()
    info["temperature_c"] = (parse_vcgencmd_temp(_run(["vcgencmd", "measure_temp"]))
                             or (max(thermal.values()) if thermal else None))
    info["thermal_zones_c"] = thermal or None
    info["throttled"] = parse_throttled(_run(["vcgencmd", "get_throttled"]))
    if kind == JETSON:
        l4t = parse_tegra_release(tegra_text)
        clocks = parse_jetson_clocks_show(_run(["jetson_clocks", "--show"]))
        info["jetson"] = {
            "model": tree_model,
            "l4t": l4t,
            "jetpack": L4T_TO_JETPACK.get(l4t) if l4t else None,
            "tensorrt": tensorrt_version(),
            "nvpmodel": parse_nvpmodel(_run(["nvpmodel", "-q"])),
            "jetson_clocks": clocks if clocks is not None else jetson_clocks_from_sysfs(),
        }
        if include_power:
            rails = read_ina_power()
            source = "ina3221 sysfs" if rails else None
            if rails is None:
                stats = read_tegrastats_once()
                rails, source = (stats or {}).get("rails_mw") or None, "tegrastats" if stats else None
            info["jetson"]["power_mw"] = rails
            info["jetson"]["power_source"] = source
    else:
        info["tensorrt"] = tensorrt_version()
    return info


def is_throttled(info: dict) -> Optional[str]:
    """A reason string when the snapshot shows throttling or under-voltage now or since boot."""
    t = info.get("throttled")
    if t:
        now = [k for k in ("under_voltage", "arm_freq_capped", "throttled", "soft_temp_limit") if t.get(k)]
        past = [k[:-len("_occurred")] for k in THROTTLE_BITS.values() if k.endswith("_occurred") and t.get(k)]
        if now:
            return f"the firmware reports {', '.join(now)} now (get_throttled={t['raw']})"
        if past:
            return f"the firmware reports {', '.join(past)} since boot (get_throttled={t['raw']})"
    return None


def pitfall_warnings(info: dict, *, iters: Optional[int] = None, measured_s: Optional[float] = None,
                     warmup: Optional[int] = None, min_iters: int = 50, min_seconds: float = 1.0) -> list[str]:
    """Conditions that make benchmark numbers unrepresentative, as one-line warnings."""
    out = []
    gov = info.get("governor") or ""
    if "powersave" in gov:
        out.append(f"CPU frequency governor is '{gov}': latency will be high and noisy; "
                   "set 'performance' (cpupower frequency-set -g performance) before benchmarking")
    elif gov and gov not in ("performance",):
        out.append(f"CPU frequency governor is '{gov}' (clock scales with load); 'performance' gives steadier numbers")
    load, cores = info.get("load_average"), info.get("cores_available") or info.get("cores")
    if load and cores and load[0] >= 0.5 * cores:
        out.append(f"the machine is busy (load average {load[0]:.1f} on {cores} cores): other processes compete for "
                   "the CPU, so latency is inflated and noisy (multi-threaded runs worst); "
                   "benchmark on an idle machine")
    reason = is_throttled(info)
    if reason:
        out.append(f"throttling: {reason}; cool the board / use the official power supply")
    temp = info.get("temperature_c")
    if temp is not None and temp >= 80:
        out.append(f"CPU at {temp:.0f} °C: close to thermal throttling")
    j = info.get("jetson") or {}
    if j and j.get("jetson_clocks") is False:
        out.append("jetson_clocks is not set: clocks scale with load; run `sudo jetson_clocks` for steady numbers")
    if iters is not None and iters < min_iters:
        out.append(f"only {iters} timed calls: percentiles (p99 above all) are unreliable; use ≥ {min_iters}")
    if measured_s is not None and measured_s < min_seconds:
        out.append(f"only {measured_s:.2f} s measured: too short to average out scheduler noise; "
                   f"use ≥ {min_seconds:g} s")
    if warmup is not None and warmup <= 0:
        out.append("no warm-up: the first calls include lazy allocation and kernel selection")
    return out
