"""The weight-pack cache: one pack per weight version, aliases share an entry, freed weights free their packs."""
import gc

import pytest
import torch

from inductor_moe.kernels import weight_cache


@pytest.fixture(autouse=True)
def _clean():
    weight_cache.clear()
    yield
    weight_cache.clear()


def _counting_pack():
    calls = []

    def pack(w):
        calls.append(1)
        return w.t().contiguous() * 2

    return pack, calls


def test_packs_once_per_version_and_repacks_after_in_place_change():
    w = torch.randn(4, 3)
    pack, calls = _counting_pack()
    first = weight_cache.get(w, "t2", pack)
    assert torch.equal(first, w.t() * 2)
    assert weight_cache.get(w, "t2", pack) is first
    assert len(calls) == 1
    with torch.no_grad():
        w.copy_(torch.randn(4, 3))          # in-place update: version bump
    second = weight_cache.get(w, "t2", pack)
    assert len(calls) == 2
    assert torch.equal(second, w.t() * 2)
    assert weight_cache.stats()["invalidated"] == 1


def test_alias_of_a_parameter_hits_the_same_entry_and_sees_its_updates():
    p = torch.nn.Parameter(torch.randn(4, 3))
    pack, calls = _counting_pack()
    weight_cache.get(p, "t2", pack)
    alias = p.detach()                         # what a compiled graph may hand the op
    weight_cache.get(alias, "t2", pack)
    assert len(calls) == 1
    with torch.no_grad():
        p.mul_(3)                              # shared version counter
    assert torch.equal(weight_cache.get(alias, "t2", pack), p.detach().t() * 2)
    assert len(calls) == 2


def test_kind_and_view_geometry_are_part_of_the_key():
    w = torch.randn(4, 4)
    pack, calls = _counting_pack()
    weight_cache.get(w, "a", pack)
    weight_cache.get(w, "b", pack)
    weight_cache.get(w[1:], "a", pack)        # same storage, other view
    weight_cache.get(w.t(), "a", pack)
    assert len(calls) == 4
    assert weight_cache.stats()["entries"] == 4


def test_freed_weight_frees_its_pack():
    w = torch.randn(256, 256)
    weight_cache.get(w, "t2", lambda t: t.clone())
    assert weight_cache.stats()["bytes"] == 256 * 256 * 4
    del w
    gc.collect()
    assert weight_cache.sweep() == 1
    assert weight_cache.stats()["entries"] == 0 and weight_cache.stats()["bytes"] == 0


def test_get_also_sweeps_dead_entries():
    w = torch.randn(8)
    weight_cache.get(w, "k", lambda t: t + 1)
    del w
    gc.collect()
    other = torch.randn(8)
    weight_cache.get(other, "k", lambda t: t + 1)
    assert weight_cache.stats()["entries"] == 1


def test_bad_arguments_name_the_argument():
    with pytest.raises(TypeError, match="weight"):
        weight_cache.get([1, 2], "k", lambda t: t)
    with pytest.raises(ValueError, match="kind"):
        weight_cache.get(torch.randn(2), "", lambda t: t)
