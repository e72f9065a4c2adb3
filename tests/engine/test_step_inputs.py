"""engine.step_inputs: a StepPlan and the runner's block tables -> positions, slots, tables, sampled rows (no model)."""
import numpy as np

from engine.step_inputs import build_step_inputs
from shared.codec import pack_ids
from shared.messages import StepPlan

BS = 4  # block size


def plan(seq_ids, num_tokens, starts, token_ids, kept, num_new, new_blocks, sample, step_id=7):
    return StepPlan(step_id, [], pack_ids(seq_ids), pack_ids(num_tokens), pack_ids(starts), pack_ids(token_ids),
                    pack_ids(kept), pack_ids(num_new), pack_ids(new_blocks), bytes(sample), b"")


def test_empty_step():
    assert build_step_inputs(plan([], [], [], [], [], [], [], []), {}, BS) is None


def test_mixed_step_positions_slots_and_tables():
    # seq 5 decodes one token at position 6 (blocks [3, 8] kept); seq 9 prefills 5 tokens from position 2
    # (keeps block 1, gains 4 and 6: positions 2..6 lie in blocks 0 and 1 of its table).
    tables = {5: [3, 8], 9: [1, 99]}
    inp = build_step_inputs(plan([5, 9], [1, 5], [6, 2], [11, 20, 21, 22, 23, -1], [2, 1], [0, 1], [4],
                                 [1, 1]), tables, BS)
    assert tables == {5: [3, 8], 9: [1, 4]}  # the runner's state follows the plan (block 99 dropped)
    assert inp.tables == [[3, 8], [1, 4]]
    assert inp.positions.tolist() == [6, 2, 3, 4, 5, 6]
    assert inp.seq_of_token.tolist() == [0, 1, 1, 1, 1, 1]
    assert inp.context_lens.tolist() == [7, 7]
    assert inp.cu_seqlens.tolist() == [0, 1, 6] and inp.cu_seqlens.dtype == np.int32
    assert inp.block_tables.tolist() == [[3, 8], [1, 4]] and inp.block_tables.dtype == np.int32
    # slot = table[pos // BS] * BS + pos % BS
    assert inp.slots.tolist() == [8 * 4 + 2, 1 * 4 + 2, 1 * 4 + 3, 4 * 4 + 0, 4 * 4 + 1, 4 * 4 + 2]
    assert inp.slots.dtype == np.int64
    assert inp.token_ids.tolist() == [11, 20, 21, 22, 23, -1]
    assert inp.num_decode_seqs() == 1 and inp.table_width == 2
    sampled, rows = inp.sampled_rows()
    assert sampled.tolist() == [5, 9] and rows.tolist() == [0, 5]  # each sequence's last token


def test_tables_padded_and_new_blocks_shared_out_in_order():
    tables = {1: [], 2: [7]}
    inp = build_step_inputs(plan([1, 2], [3, 1], [0, 4], [1, 2, 3, -1], [0, 1], [1, 1], [10, 11], [0, 1]),
                            tables, BS)
    assert tables == {1: [10], 2: [7, 11]}
    assert inp.block_tables.tolist() == [[10, 0], [7, 11]]  # zero padding past a short table
    assert inp.slots.tolist() == [40, 41, 42, 44]
    sampled, rows = inp.sampled_rows()
    assert sampled.tolist() == [2] and rows.tolist() == [3]  # seq 1 is a prompt chunk: not sampled


def test_pure_decode_samples_every_row_as_it_is():
    tables = {3: [0], 4: [2], 6: [5]}
    inp = build_step_inputs(plan([4, 3, 6], [1, 1, 1], [0, 3, 1], [-1, -1, 9], [1, 1, 1], [0, 0, 0], [],
                                 [1, 1, 1]), tables, BS)
    assert inp.positions.tolist() == [0, 3, 1]
    assert inp.slots.tolist() == [8, 3, 21]
    assert inp.num_decode_seqs() == 3
    sampled, rows = inp.sampled_rows()
    assert sampled.tolist() == [4, 3, 6] and rows is None  # no gather needed


def test_chunk_end_of_a_long_prompt_crosses_blocks():
    tables = {8: [2, 3]}
    inp = build_step_inputs(plan([8], [6], [5], list(range(6)), [2], [1], [9], [1]), tables, BS)
    assert inp.positions.tolist() == [5, 6, 7, 8, 9, 10]
    assert inp.slots.tolist() == [13, 14, 15, 36, 37, 38]
    assert inp.num_decode_seqs() == 0 and inp.context_lens.tolist() == [11]
    assert inp.sampled_rows()[1].tolist() == [5]
