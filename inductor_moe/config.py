"""User-facing settings of the graph pass. They enter the pass's ``uuid()``, so changing one
invalidates Inductor's FX-graph cache entries compiled under another value."""

# pattern NAMEs to skip (e.g. {"moe_fused"} to keep route and experts as two ops)
disabled_patterns: set[str] = set()


def snapshot() -> dict:
    return {"disabled_patterns": sorted(disabled_patterns)}
