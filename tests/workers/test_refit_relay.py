"""The cross-node refit's plan without processes: the route (who writes, who receives what) and
the relay (which byte ranges cross whole).

Expected values come from the layout rule, not from the code under test: Megatron gives PP stage
``s`` of ``P`` the layers ``[s*L/P, (s+1)*L/P)``, the embedding to the first stage and the final
norm and LM head to the last; the engines' files are laid out in HF order
(:func:`megatron_brrm.rollout.shm.layout_entries`), so each stage's tensors are one run of entries.
"""
from types import SimpleNamespace

from megatron_brrm.model.mapping import get_mapping
from megatron_brrm.rollout.shm import layout_entries
from megatron_brrm.workers.refit_route import plan_route
from megatron_brrm.workers.refit_shm import relay_ranges, shared_layout


def _mapping(layers=4):
    return get_mapping({"model_type": "qwen3", "num_hidden_layers": layers, "hidden_size": 32,
                        "intermediate_size": 48, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 8,
                        "vocab_size": 1000, "tie_word_embeddings": False})


def _ranks(tp, pp, nodes):
    """Megatron's rank order (TP fastest, then PP); rank ``r`` on ``nodes[r * len(nodes) // world]``."""
    world = tp * pp
    return [SimpleNamespace(rank=r, tp_rank=r % tp, tp_size=tp, pp_rank=r // tp, pp_size=pp, dp_rank=0, cp_rank=0,
                            node_id=nodes[r * len(nodes) // world]) for r in range(world)]


def _layout(mapping, names=None):
    names = names or mapping.hf_param_names()
    return layout_entries((n, tuple(mapping.hf_shape(n)), "float32") for n in names)


def _stage(name, layers=4, pp=2):
    """The stage of an HF tensor by the rule in the module docstring (from its name alone)."""
    if "embed_tokens" in name:
        return 0
    if name.startswith("model.layers."):
        return int(name.split(".")[2]) * pp // layers
    return pp - 1  # model.norm, lm_head


def test_route_pp2_one_stage_per_node():
    route = plan_route(_ranks(1, 2, ["n0", "n1"]), ["n0", "n1"])
    assert route.writers == {("n0", 0, 0): 0, ("n1", 1, 0): 1}
    assert route.receivers == {"n0": 0, "n1": 1}
    assert [(g.key, g.source, g.receivers) for g in route.groups] == [((0, 0), 0, (1,)), ((1, 0), 1, (0,))]


def test_relay_ranges_cover_each_stage_exactly():
    mapping = _mapping()
    route = plan_route(_ranks(1, 2, ["n0", "n1"]), ["n0", "n1"])
    layout = _layout(mapping)
    names = mapping.hf_param_names()
    ranges = relay_ranges(mapping, route, layout, names)
    for stage in (0, 1):
        entries = [e for e in layout if _stage(e.hf_name) == stage]
        assert ranges[(stage, 0)] == (entries[0].offset, entries[-1].end)
    assert ranges[(0, 0)][1] <= ranges[(1, 0)][0]  # disjoint, stage 0 first
    # a bucket holding only stage-1 tensors: stage 0's group carries nothing, so it has no range
    tail = [n for n in names if _stage(n) == 1][:5]
    part = relay_ranges(mapping, route, _layout(mapping, tail), tail)
    assert list(part) == [(1, 0)] and part[(1, 0)][0] == 0


def test_relay_at_tp2_pp2_sends_each_stage_from_its_tp0_rank():
    """TP=2 x PP=2, one stage per node: both TP shards of a stage are written on its node, so the
    stage still crosses as one range, over the (stage, 0) group, after its two writers sync."""
    mapping = _mapping()
    route = plan_route(_ranks(2, 2, ["n0", "n1"]), ["n0", "n1"])
    assert route.stage_sources(0) == (0, 1) and route.stage_sources(1) == (2, 3)
    layout = _layout(mapping)
    ranges = relay_ranges(mapping, route, layout, mapping.hf_param_names())
    assert sorted(ranges) == [(0, 0), (1, 0)]
    for stage in (0, 1):
        entries = [e for e in layout if _stage(e.hf_name) == stage]
        assert ranges[(stage, 0)] == (entries[0].offset, entries[-1].end)
        assert route.group_for((stage, 0)).source == 2 * stage  # the stage's TP-0 rank sends


def test_relay_refused_where_a_range_would_be_wrong():
    mapping = _mapping()
    names = mapping.hf_param_names()
    pp2 = plan_route(_ranks(1, 2, ["n0", "n1"]), ["n0", "n1"])
    assert relay_ranges(mapping, pp2, None, names) is None  # no common layout
    # TP=2 with one TP rank per node: no node holds a whole stage, and a TP shard is rows spread
    # over many tensors, not one range
    tp2 = plan_route(_ranks(2, 1, ["n0", "n1"]), ["n0", "n1"])
    assert relay_ranges(mapping, tp2, _layout(mapping), names) is None
    # a stage-1 tensor laid out among stage 0's: the stage is not one run of bytes
    moved = [n for n in names if n != "model.norm.weight"]
    moved.insert(1, "model.norm.weight")
    assert relay_ranges(mapping, pp2, _layout(mapping, moved), names) is None
    # a name of the call missing from the layout
    assert relay_ranges(mapping, pp2, _layout(mapping, names[1:]), names) is None
    # stage 0's source sits on a node without engines: it has no file to send from
    elsewhere = plan_route(_ranks(1, 2, ["n0", "n1"]), ["n1"])
    assert [g.source for g in elsewhere.groups] == [0]
    assert relay_ranges(mapping, elsewhere, _layout(mapping), names) is None


def test_shared_layout_needs_every_node_and_one_layout():
    mapping = _mapping()
    a, b = _layout(mapping), _layout(mapping, mapping.hf_param_names()[::-1])
    same = {"n0": [("/x", 1, a)], "n1": [("/y", 1, a), ("/z", 1, list(a))]}
    assert shared_layout(same, ["n0", "n1"]) == list(a)
    assert shared_layout({"n0": [("/x", 1, a)]}, ["n0", "n1"]) is None  # n1 has no file in this call
    assert shared_layout({"n0": [("/x", 1, a)], "n1": [("/y", 1, b)]}, ["n0", "n1"]) is None
