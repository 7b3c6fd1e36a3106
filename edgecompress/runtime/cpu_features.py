"""The CPU this runs on: its feature flags, VNNI, and the ONNX Runtime int8 scheme that suits it."""

from __future__ import annotations

from pathlib import Path

from edgecompress.errors import ConfigError

# ONNX Runtime int8 schemes (activations, weights). U8S8 is fastest, but on x86 CPUs without VNNI its
# kernels (vpmaddubsw) saturate 16-bit sums: measured under emulation of an AVX2 CPU, a Fashion-MNIST
# ResNet-8 agreed with fp32 on 96.4% of images with U8S8, 97.8% with U8S8 + reduce_range, 98.8% with U8U8,
# as with U8S8 on a VNNI CPU. So "auto" is U8S8 with VNNI (or off x86) and U8U8 without. U8U8 kernels
# are slower (0.78x fp32 on a VNNI EPYC, bench/results/int8_schemes.json); "u8s8_rr" (7-bit weights,
# U8S8 kernels, 97.8% in that emulation) is the speed-first choice for a CPU without VNNI.
INT8_SCHEMES = ("auto", "u8s8", "u8u8", "u8s8_rr")


def cpu_flags() -> set[str]:
    """The CPU feature flags of this machine (empty where /proc/cpuinfo is not readable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_vnni(flags: set[str] | None = None) -> bool:
    """True when the CPU has VNNI/AMX int8 dot products (8-bit products summed without saturation)."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def resolve_int8_scheme(scheme: str = "auto", flags: set[str] | None = None) -> tuple[str, str]:
    """(scheme, reason): "auto" gives U8U8 on an x86 CPU without VNNI, else U8S8 (see INT8_SCHEMES)."""
    if scheme not in INT8_SCHEMES:
        raise ConfigError(f"`int8_scheme` must be one of {INT8_SCHEMES}, got {scheme!r}")
    if scheme != "auto":
        return scheme, "set explicitly"
    flags = cpu_flags() if flags is None else flags
    if has_vnni(flags):
        return "u8s8", "CPU with VNNI"
    if "avx2" in flags or "avx512f" in flags or "sse4_1" in flags:
        return "u8u8", "x86 CPU without VNNI, where U8S8 saturates"
    return "u8s8", "not an x86 CPU" if flags else "CPU flags unknown"
