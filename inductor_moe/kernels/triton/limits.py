"""Sizes the Triton route/sort kernels take (no Triton import: read by the ``supports`` predicates)."""
MAX_EXPERTS = 4096  # route: one row of logits per program at the most; sort: one-hot tiles over experts
MAX_TOP_K = 16  # route: k rounds of argmax, a [BLOCK_T, next_pow2(k)] accumulator
MAX_OFFSET = (1 << 31) - 1  # sort: positions in the sorted layout are int32
