"""PyTorch reference kernels: the ground truth for every other backend and the CPU path.

Written for clarity and exactness (f32 math), sync-free and with output shapes that depend only
on input shapes, so they are also a capturable (if slow) fallback on accelerators.
"""
from .activation import apply_activation
from .experts import experts_ref, experts_sorted_ref
from .route import route_ref
from .sort import sort_ref

__all__ = ["apply_activation", "experts_ref", "experts_sorted_ref", "route_ref", "sort_ref"]
