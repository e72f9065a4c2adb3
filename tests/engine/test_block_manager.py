"""The block manager on its own: reference counts, hash-chained prefix hits, LRU reuse."""
from engine.block_manager import BlockManager
from engine.sequence import Sequence
from shared.sampling_params import SamplingParams


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


def test_blocks_without_a_hash_are_reused_first_and_tails_before_heads():
    bm = BlockManager(4, 4)
    a = seq(range(10))  # two full (cached) blocks and a partial one
    run_prefill(bm, a)
    head, tail, partial = a.block_table
    bm.free(a)
    assert list(bm.free_ids) == [partial, 3, tail, head]
    other = seq(range(50, 58), sid=1)
    assert bm.allocate_slots(other, 8)  # takes the two blocks that hold nothing reusable
    assert sorted(other.block_table) == sorted([partial, 3]) and len(bm.cached) == 2
    assert bm.allocate_slots(seq([9], sid=2), 1)  # evicts the tail: the shared head outlives it
    again = seq(list(range(10)), sid=3)
    assert bm.attach_cached_prefix(again) == 4 and again.block_table == [head]


def test_least_recently_freed_is_evicted_first():
    bm = BlockManager(4, 4)
    a, b = seq(range(5)), seq(range(20, 25), sid=1)
    run_prefill(bm, a)
    run_prefill(bm, b)
    bm.free(a)
    bm.free(b)
    # the two partial blocks go first, then a's cached block (freed before b's)
    assert bm.allocate_slots(seq(range(40, 52), sid=2), 12)
    assert bm.attach_cached_prefix(seq(range(5), sid=3)) == 0
    assert bm.attach_cached_prefix(seq(range(20, 25), sid=4)) == 4


def test_shared_blocks_are_freed_with_their_last_user():
    bm = BlockManager(4, 4)
    a = seq(range(9))
    run_prefill(bm, a)
    b = seq(range(9), sid=1)
    assert bm.attach_cached_prefix(b) == 8
    assert bm.allocate_slots(b, 1) and bm.num_free_blocks == 0
    bm.free(a)
    assert bm.num_free_blocks == 1 and [bm.blocks[i].ref_count for i in b.block_table] == [1, 1, 1]
    bm.free(b)
    assert bm.num_free_blocks == 4 and not b.block_table and b.num_computed_tokens == 0


def test_prefix_caching_off_shares_nothing():
    bm = BlockManager(8, 4, enable_prefix_caching=False)
    run_prefill(bm, seq(range(9)))
    assert bm.cached == {} and bm.attach_cached_prefix(seq(range(9), sid=1)) == 0
