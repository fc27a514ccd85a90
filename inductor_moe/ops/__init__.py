"""Op contracts: ``torch.ops.inductor_moe.{route, sort, route_sort, experts_sorted, experts, moe}``.

Each module holds one op's contract (docstring), its ``custom_op`` registration, its fake impl and the
registration of its reference kernel with the dispatch. Importing this package registers them all.
"""
from . import experts, moe, route, route_sort, sort  # noqa: F401

OP_NAMES = ("route", "sort", "route_sort", "experts_sorted", "experts", "moe")
