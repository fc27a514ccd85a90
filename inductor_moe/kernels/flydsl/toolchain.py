"""Where FlyDSL's compile-only path finds its tools, and why it cannot run when it cannot.

FlyDSL lowers a kernel to AMDGPU code on any machine (``COMPILE_ONLY=1 ARCH=gfx942``) once it finds
``$ROCM_PATH/llvm/bin/ld.lld``. ``.ci/setup_flydsl.sh`` installs Debian's lld-19 and makes a scratch
ROCm folder (``~/.cache/inductor_moe_rocm`` unless ``INDUCTOR_MOE_ROCM_PATH`` says otherwise) holding
that link; this module finds it. Nothing here imports FlyDSL.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
from pathlib import Path

FLYDSL_VERSION = "0.4.2"


def _scratch_rocm() -> Path:
    return Path(os.environ.get("INDUCTOR_MOE_ROCM_PATH") or Path.home() / ".cache" / "inductor_moe_rocm")


def rocm_path() -> str | None:
    """A ROCm root whose ``llvm/bin/ld.lld`` exists: $ROCM_PATH, the set-up script's scratch folder, or
    /opt/rocm; None when there is none."""
    for candidate in (os.environ.get("ROCM_PATH"), str(_scratch_rocm()), "/opt/rocm"):
        if candidate and os.access(Path(candidate) / "llvm" / "bin" / "ld.lld", os.X_OK):
            return candidate
    return None


def flydsl_version() -> str | None:
    if importlib.util.find_spec("flydsl") is None:
        return None
    try:
        return importlib.metadata.version("flydsl")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def compile_only_unavailable() -> str | None:
    """None when kernels can be compiled here without a GPU, else the reason they cannot."""
    version = flydsl_version()
    if version is None:
        return "flydsl is not installed (bash .ci/setup_flydsl.sh)"
    if version != FLYDSL_VERSION:
        return f"flydsl {version} is installed; the kernels are written against {FLYDSL_VERSION}"
    if rocm_path() is None:
        return ("no ld.lld under $ROCM_PATH/llvm/bin, ~/.cache/inductor_moe_rocm/llvm/bin or /opt/rocm/llvm/bin "
                "(bash .ci/setup_flydsl.sh installs lld-19 and links it)")
    return None


@contextlib.contextmanager
def compile_only_env(arch: str, dump_dir: str | os.PathLike | None = None):
    """Environment for a compile-only FlyDSL build for ``arch``: no GPU runtime, no disk cache, the ISA
    dumped under ``dump_dir`` when given. Restores the previous environment on exit."""
    settings = {
        "COMPILE_ONLY": "1",
        "ARCH": arch,
        "FLYDSL_GPU_ARCH": arch,
        "FLYDSL_RUNTIME_ENABLE_CACHE": "0",
        "FLYDSL_DEBUG_DUMP_ASM": "1" if dump_dir is not None else None,
        "FLYDSL_DUMP_DIR": str(dump_dir) if dump_dir is not None else None,
        "ROCM_PATH": rocm_path() or os.environ.get("ROCM_PATH"),
    }
    saved = {k: os.environ.get(k) for k in settings}
    try:
        for k, v in settings.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def dumped_isa(out_dir, *names: str) -> str:
    """The final ISA that a compile under ``compile_only_env(arch, out_dir)`` dumped for the kernel(s)
    ``names``: the newest ``*_final_isa.s`` below ``out_dir`` that defines every one of them."""
    for path in sorted(Path(out_dir).glob("**/*_final_isa.s"), key=lambda p: p.stat().st_mtime, reverse=True):
        text = path.read_text()
        if all(f"\n{name}:\n" in text for name in names):
            return text
    raise RuntimeError(f"FlyDSL wrote no ISA holding {', '.join(names)} under {out_dir}")


ARCHS = ("gfx942", "gfx950")  # the AMD Instinct targets the FlyDSL kernels are written for


def device_arch(device) -> str | None:
    """The gfx target of ``device`` when it is a ROCm GPU the FlyDSL kernels target, else None."""
    import torch

    if device.type != "cuda" or torch.version.hip is None:
        return None
    arch = torch.cuda.get_device_properties(device).gcnArchName.split(":")[0]
    return arch if arch in ARCHS else None
