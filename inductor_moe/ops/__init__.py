"""Op contracts: ``torch.ops.inductor_moe.{route, sort, route_sort, experts_sorted, experts, moe, experts_mxfp4}``.

Each module holds one op's contract (docstring), its ``custom_op`` registration, its fake impl and the
registration of its reference kernel with the dispatch. Importing this package registers them all.
"""
from . import experts, moe, route, route_sort, sort  # noqa: F401
from . import experts_mxfp4  # noqa: F401  MXFP4-weight experts; its opcheck: tests/ops/test_experts_mxfp4.py

OP_NAMES = ("route", "sort", "route_sort", "experts_sorted", "experts", "moe")



def _register_kernel_families() -> None:
    """Register the optional kernel families whose dependencies are installed (imported on first use)."""
    import importlib.util

    from .. import dispatch

    if importlib.util.find_spec("triton") is not None:
        module = "inductor_moe.kernels.triton.experts"
        for op in ("experts_sorted", "experts", "moe"):
            # verified: tools/gpu_check.py, 251/251 cases on an H100 (benchmarks/results/gpu_check.json)
            dispatch.register_kernel(op, "triton", f"{module}:{op}_triton", f"{module}:supports_experts")
        # MXFP4 weights: verified by tools/gpu_check_mxfp4.py, 112/112 cases on an H100
        # (benchmarks/results/gpu_check_mxfp4.json)
        mxfp4 = "inductor_moe.kernels.triton.experts_mxfp4"
        dispatch.register_kernel("experts_mxfp4", "triton", f"{mxfp4}:experts_mxfp4_triton",
                                 f"{mxfp4}:supports_experts_mxfp4")
        from ..kernels import triton as triton_kernels  # its register() names the route/sort kernels

        if hasattr(triton_kernels, "register"):
            triton_kernels.register(verified=True)
    if importlib.util.find_spec("flydsl") is not None:
        from ..kernels import flydsl as flydsl_kernels

        flydsl_kernels.register()


_register_kernel_families()
