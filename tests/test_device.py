"""Device parsers on text in the formats real boards print (Raspberry Pi 4/5, Jetson Nano/Orin)."""
from __future__ import annotations

import json

from edgeface.core import device as D

PI4_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

Hardware\t: BCM2835
Revision\t: c03114
Serial\t\t: 100000002d2f4c1a
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""
PI5_FEATURES = ("Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc "
                "dcpop asimddp\nCPU part\t: 0xd0b\n")
X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model\t\t: 17
model name\t: AMD EPYC 9454 48-Core Processor
flags\t\t: fpu sse sse2 avx avx2 fma f16c avx512f avx512bw avx512_vnni avx_vnni
"""
ORIN_TEGRASTATS = ("08-14-2023 10:11:12 RAM 2516/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) CPU [3%@1510,1%@1510,"
                   "0%@1510,0%@1510,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[624] NVENC off NVDEC off NVJPG off "
                   "NVJPG1 off VIC off OFA off NVDLA0 off NVDLA1 off PVA0_FREQ off APE 174 cpu@47.25C soc2@45.312C "
                   "soc0@45.593C gpu@45.718C tj@47.25C soc1@45.687C VDD_IN 4965mW/4965mW VDD_CPU_GPU_CV 632mW/632mW "
                   "VDD_SOC 1423mW/1423mW")
NANO_TEGRASTATS = ("RAM 1507/3964MB (lfb 122x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) CPU "
                   "[4%@1479,2%@1479,0%@1479,0%@1479] EMC_FREQ 0%@1600 GR3D_FREQ 0%@921 APE 25 PLL@31C CPU@33.5C "
                   "PMIC@100C GPU@31.5C AO@40C thermal@32.25C POM_5V_IN 2310/2310 POM_5V_GPU 0/0 POM_5V_CPU 327/327")
JETSON_CLOCKS_SHOW_ON = """SOC family:tegra234  Machine:NVIDIA Orin Nano Developer Kit
Online CPUs: 0-5
cpu0: Online=1 Governor=schedutil MinFreq=1510400 MaxFreq=1510400 CurrentFreq=1510400 IdleStates: WFI=0 cpuidle=0
cpu1: Online=1 Governor=schedutil MinFreq=1510400 MaxFreq=1510400 CurrentFreq=1510400 IdleStates: WFI=0 cpuidle=0
GPU MinFreq=624750000 MaxFreq=624750000 CurrentFreq=624750000
EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000 FreqOverride=1
NV Power Mode: 15W
"""


def test_cpuinfo_pi4_pi5_x86():
    pi4 = D.parse_cpuinfo(PI4_CPUINFO)
    assert pi4["cpu_model"] == "Cortex-A72" and pi4["board_model"] == "Raspberry Pi 4 Model B Rev 1.4"
    assert pi4["isa_flags"] == ["asimd"]  # no fp16 arithmetic, no dot product on the A72
    pi5 = D.parse_cpuinfo(PI5_FEATURES)
    assert pi5["cpu_model"] == "Cortex-A76" and {"asimdhp", "asimddp", "fphp"} <= set(pi5["isa_flags"])
    x86 = D.parse_cpuinfo(X86_CPUINFO)
    assert x86["cpu_model"] == "AMD EPYC 9454 48-Core Processor" and x86["board_model"] is None
    assert "avx512_vnni" in x86["isa_flags"] and "sse2" not in x86["isa_flags"]


def test_device_tree_and_throttling():
    assert D.parse_device_tree_model("Raspberry Pi 5 Model B Rev 1.0\x00") == "Raspberry Pi 5 Model B Rev 1.0"
    t = D.parse_throttled("throttled=0x50005\n")
    assert t["raw"] == "0x50005" and t["under_voltage"] and t["throttled"] and t["under_voltage_occurred"]
    assert t["throttled_occurred"] and not t["arm_freq_capped"] and not t["soft_temp_limit_occurred"]
    assert D.parse_throttled("throttled=0x0")["throttled"] is False
    assert D.parse_throttled("") is None and D.parse_throttled("garbage") is None
    assert D.parse_vcgencmd_temp("temp=47.2'C\n") == 47.2
    assert "under_voltage" in D.is_throttled({"throttled": t})
    past = D.is_throttled({"throttled": D.parse_throttled("throttled=0x20000")})
    assert "since boot" in past and "arm_freq_capped" in past


def test_thermal_zones_and_governor(tmp_path):
    for i, (kind, milli) in enumerate((("cpu-thermal", "48312"), ("gpu-thermal", "41000"))):
        z = tmp_path / "thermal" / f"thermal_zone{i}"
        z.mkdir(parents=True)
        (z / "type").write_text(kind + "\n")
        (z / "temp").write_text(milli + "\n")
    assert D.read_thermal_zones(tmp_path / "thermal") == {"cpu-thermal": 48.3, "gpu-thermal": 41.0}
    for i, gov in enumerate(("powersave", "powersave")):
        c = tmp_path / "cpu" / f"cpu{i}" / "cpufreq"
        c.mkdir(parents=True)
        (c / "scaling_governor").write_text(gov + "\n")
        (c / "scaling_min_freq").write_text("600000\n")
        (c / "cpuinfo_max_freq").write_text("1800000\n")
    assert D.read_governors(tmp_path / "cpu") == {"cpu0": "powersave", "cpu1": "powersave"}
    assert D.jetson_clocks_from_sysfs(tmp_path / "cpu") is False
    warns = D.pitfall_warnings({"governor": "powersave"}, iters=10, measured_s=0.2, warmup=0)
    assert len(warns) == 4 and "powersave" in warns[0] and "performance" in warns[0]
    assert D.pitfall_warnings({"governor": "performance"}, iters=500, measured_s=3.0, warmup=10) == []
    busy = D.pitfall_warnings({"load_average": [13.2, 12.0, 9.0], "cores_available": 2})
    assert len(busy) == 1 and "busy (load average 13.2 on 2 cores)" in busy[0]
    assert D.pitfall_warnings({"load_average": [0.2, 0.1, 0.1], "cores_available": 2}) == []


def test_jetson_parsers(tmp_path):
    assert D.parse_tegra_release("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
                                 "DATE: Tue Aug  1 19:57:35 UTC 2023") == "35.4.1"
    l4t = D.parse_tegra_release("# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64")
    assert l4t == "36.3.0" and D.L4T_TO_JETPACK[l4t] == "6.0"
    assert D.parse_tegra_release("# R32 (release), REVISION: 7.1, GCID: 29818004") == "32.7.1"
    assert D.parse_nvpmodel("NVPM WARN: fan mode is not set!\nNV Power Mode: MAXN\n0\n") == {"name": "MAXN", "id": 0}
    assert D.parse_nvpmodel("NV Power Mode: 15W\n2\n") == {"name": "15W", "id": 2}
    assert D.parse_jetson_clocks_show(JETSON_CLOCKS_SHOW_ON) is True
    assert D.parse_jetson_clocks_show(JETSON_CLOCKS_SHOW_ON.replace("MinFreq=624750000", "MinFreq=306000000")) is False
    orin = D.parse_tegrastats(ORIN_TEGRASTATS)
    assert orin["rails_mw"] == {"VDD_IN": 4965, "VDD_CPU_GPU_CV": 632, "VDD_SOC": 1423}
    assert orin["temps_c"]["cpu"] == 47.25 and orin["temps_c"]["tj"] == 47.25
    nano = D.parse_tegrastats(NANO_TEGRASTATS)
    assert nano["rails_mw"] == {"POM_5V_IN": 2310, "POM_5V_GPU": 0, "POM_5V_CPU": 327}
    assert nano["temps_c"]["gpu"] == 31.5
    header = "#define NV_TENSORRT_MAJOR 8\n#define NV_TENSORRT_MINOR 5\n#define NV_TENSORRT_PATCH 2\n"
    assert D.parse_nvinfer_version_header(header) == "8.5.2"
    # INA3221 sysfs as JetPack 5 lays it out (hwmon: mV and mA) and JetPack 4 (IIO: mW)
    hw = tmp_path / "drivers" / "ina3221" / "1-0040" / "hwmon" / "hwmon3"
    hw.mkdir(parents=True)
    (hw / "in1_label").write_text("VDD_IN\n")
    (hw / "in1_input").write_text("5080\n")
    (hw / "curr1_input").write_text("976\n")
    iio = tmp_path / "drivers" / "ina3221x" / "6-0040" / "iio:device0"
    iio.mkdir(parents=True)
    (iio / "rail_name_0").write_text("POM_5V_IN\n")
    (iio / "in_power0_input").write_text("2310\n")
    assert D.read_ina_power(tmp_path / "drivers") == {"VDD_IN": round(5080 * 976 / 1000, 1), "POM_5V_IN": 2310.0}


def test_device_info_here_is_honest():
    info = D.device_info()
    json.dumps(info)  # JSON-able
    assert info["cores"] >= 1 and info["machine"]
    with open("/proc/cpuinfo") as fh:
        text = fh.read()
    assert info["cpu_model"] == D.parse_cpuinfo(text)["cpu_model"]
    for key in ("governor", "temperature_c", "throttled", "board_model"):
        assert key in info  # present, None where this machine cannot tell


def test_one_device_vocabulary(monkeypatch):
    """Defect: the benchmark snapshot said "arm" where bundles and backend="auto" said "arm64" for the same
    board. One classifier now names a machine for both."""
    import platform

    tegra = "# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64"
    for machine, board, release, want in (("x86_64", None, None, "x86"), ("aarch64", None, None, "arm64"),
                                          ("armv7l", None, None, "arm64"),
                                          ("aarch64", "Raspberry Pi 5 Model B Rev 1.0", None, "rpi"),
                                          ("aarch64", "NVIDIA Jetson Orin Nano Developer Kit", tegra, "jetson")):
        assert D.classify(machine, board, release) == want
    assert set(D.DEVICE_KINDS) == {"x86", "rpi", "jetson", "arm64"}
    monkeypatch.delenv("EDGEFACE_DEVICE", raising=False)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")  # an ARM board the probes do not know
    assert D.device_info(include_power=False)["kind"] == D.detect_device() == "arm64"


def test_int8_without_vnni_is_read_from_the_flags():
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma\n"
    assert D.x86_int8_without_vnni(x86, "x86_64") is True
    assert D.x86_int8_without_vnni(x86.replace("fma", "fma avx512_vnni"), "x86_64") is False
    assert D.x86_int8_without_vnni(x86.replace("fma", "fma avx_vnni"), "x86_64") is False
    assert D.x86_int8_without_vnni(PI4_CPUINFO, "aarch64") is False  # not an x86 question
