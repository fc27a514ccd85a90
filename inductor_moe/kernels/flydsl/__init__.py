"""FlyDSL kernels for AMD Instinct gfx942 / gfx950 (``pip install flydsl==0.4.2``).

- ``layout``: the router kernel's index arithmetic in plain Python (shared with the tests' emulation).
- ``route``: top-k gating kernel for ``inductor_moe::route`` (``route_flydsl``, ``supports_route``,
  ``build_route_kernel``, ``compile_route_kernel`` for the ISA without a GPU).
- ``sort``, ``sort_layout``: moe_sorting for ``inductor_moe::sort`` (one-workgroup LDS path for small T,
  count + scan + scatter launches beyond), its index arithmetic in plain Python (shared with the tests'
  emulation).
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
