"""The block manager on its own: reference counts, hash-chained prefix hits, LRU reuse."""
from shared.sampling_params import SamplingParams
from engine.block_manager import BlockManager
from engine.sequence import Sequence


def seq(tokens, sid=0):
    return Sequence(sid, f"r{sid}", 0, 0, SamplingParams(), list(tokens), len(tokens))


def run_prefill(bm, s):
    assert bm.allocate_slots(s, s.num_tokens - s.num_computed_tokens)
    s.num_computed_tokens = s.num_tokens
    bm.commit_full_blocks(s)


def test_prefix_is_shared_and_counted():
    bm = BlockManager(8, 4)
    a = seq(range(10))
    run_prefill(bm, a)
    assert len(a.block_table) == 3 and bm.num_free_blocks == 5
    b = seq(list(range(8)) + [99, 98], sid=1)
    assert bm.attach_cached_prefix(b) == 8  # two full blocks shared
    assert b.block_table == a.block_table[:2]
    assert bm.blocks[a.block_table[0]].ref_count == 2
    c = seq([7] + list(range(1, 10)), sid=2)  # differs in the first token: no hit anywhere down the chain
    assert bm.attach_cached_prefix(c) == 0


def test_whole_prompt_cached_still_leaves_one_token():
    bm = BlockManager(8, 4)
    a = seq(range(8))
    run_prefill(bm, a)
    b = seq(range(8), sid=1)
    assert bm.attach_cached_prefix(b) == 4  # the last block is recomputed for its logits


def test_freed_blocks_stay_cached_until_reused():
    bm = BlockManager(4, 4)
    a = seq(range(8))
    run_prefill(bm, a)
    bm.free(a)
    assert bm.num_free_blocks == 4
    b = seq(list(range(8)) + [1], sid=1)
    assert bm.attach_cached_prefix(b) == 8
    bm.free(b)
    big = seq(range(100, 116), sid=2)  # needs every block: evicts the cached ones
    assert bm.allocate_slots(big, 16)
    assert bm.cached == {}
    assert not bm.allocate_slots(seq(range(3), sid=3), 3)
