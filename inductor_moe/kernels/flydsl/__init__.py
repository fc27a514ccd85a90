"""FlyDSL kernels for AMD Instinct gfx942 / gfx950 (``pip install flydsl==0.4.2``).

- ``layout``: the router kernel's index arithmetic in plain Python (shared with the tests' emulation).
- ``route``: top-k gating kernel for ``inductor_moe::route`` (``route_flydsl``, ``supports_route``,
  ``build_route_kernel``, ``compile_route_kernel`` for the ISA without a GPU).
- ``sort``, ``sort_layout``: moe_sorting for ``inductor_moe::sort`` (one-workgroup LDS path for small T,
  count + scan + scatter launches beyond), its index arithmetic in plain Python (shared with the tests'
  emulation).
- ``route_sort``, ``route_sort_layout``: one-launch route + sort for decode (seed 001): top-k gating, LDS
  histogram + scan, scatter, all in one workgroup; past its LDS/pair budget the separate route + sort.
- ``experts``, ``experts_layout``: two-stage bf16 MoE GEMMs for ``experts_sorted`` (MFMA, LDS ping-pong for
  the gathered activations, weights preshuffled once per weight version through ``kernels.weight_cache``).
- ``experts_mxfp4``, ``mxfp4_layout``: A16W4 two-stage GEMMs for ``experts_mxfp4`` (FP4 -> bf16 in registers:
  ``v_perm_b32`` lookups on gfx942, ``v_cvt_scalef32_pk_bf16_fp4`` on gfx950; bf16 MFMA).
- ``moe``: ``experts`` and ``moe`` composed from the above (sort or route_sort, then the GEMMs).
- ``toolchain``: finds the compile-only tools that ``.ci/setup_flydsl.sh`` installs.

Importing this package imports neither FlyDSL nor the kernels. The kernels have been compiled and their
ISA checked, but not yet run on an AMD GPU: ``register`` enters them as unverified (used only when forced
or with ``INDUCTOR_MOE_UNVERIFIED=1``).
"""


def register() -> None:
    """Register the FlyDSL kernels with the dispatch (imported on first use)."""
    from ... import dispatch

    dispatch.register_kernel("route", "flydsl", "inductor_moe.kernels.flydsl.route:route_flydsl",
                             "inductor_moe.kernels.flydsl.route:supports_route", verified=False)
    dispatch.register_kernel("sort", "flydsl", "inductor_moe.kernels.flydsl.sort:sort_flydsl",
                             "inductor_moe.kernels.flydsl.sort:supports_sort", verified=False)
    dispatch.register_kernel("route_sort", "flydsl", "inductor_moe.kernels.flydsl.route_sort:route_sort_flydsl",
                             "inductor_moe.kernels.flydsl.route_sort:supports_route_sort", verified=False)
    dispatch.register_kernel("experts_sorted", "flydsl", "inductor_moe.kernels.flydsl.experts:experts_sorted_flydsl",
                             "inductor_moe.kernels.flydsl.experts:supports_experts_sorted", verified=False)
    dispatch.register_kernel("experts_mxfp4", "flydsl",
                             "inductor_moe.kernels.flydsl.experts_mxfp4:experts_mxfp4_flydsl",
                             "inductor_moe.kernels.flydsl.experts_mxfp4:supports_experts_mxfp4", verified=False)
    dispatch.register_kernel("experts", "flydsl", "inductor_moe.kernels.flydsl.moe:experts_flydsl",
                             "inductor_moe.kernels.flydsl.moe:supports_experts", verified=False)
    dispatch.register_kernel("moe", "flydsl", "inductor_moe.kernels.flydsl.moe:moe_flydsl",
                             "inductor_moe.kernels.flydsl.moe:supports_moe", verified=False)
