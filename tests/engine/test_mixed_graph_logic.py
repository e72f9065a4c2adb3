"""The host side of the mixed-step CUDA graphs (engine/mixed_graphs.py), checked on the CPU: the captured token
counts, which steps replay a graph, how a step's rows and padding are laid out in the static buffer, and that
attention over that fixed-row layout (the Triton kernels, interpreted) equals attention over the eager layout."""
import numpy as np
import pytest
import torch

from engine.layers.attention import AttentionMetadata, triton_attention
from engine.layers.rotary import RotaryEmbedding
from engine.mixed_graphs import MAX_PROMPT_SEQS, MixedGraphRunner, MixedInputs, mixed_token_sizes
from engine.step_inputs import build_step_inputs
from tests.engine.test_step_inputs import plan

BS = 4  # block size


def test_token_sizes_by_16_then_32_ending_at_the_maximum():
    assert mixed_token_sizes(64) == [16, 32, 48, 64]
    assert mixed_token_sizes(512)[15:18] == [256, 288, 320] and mixed_token_sizes(512)[-1] == 512
    assert mixed_token_sizes(100) == [16, 32, 48, 64, 80, 96, 100]
    assert mixed_token_sizes(300)[-2:] == [288, 300]
    assert mixed_token_sizes(0) == []
    for m in range(1, 700, 7):
        sizes = mixed_token_sizes(m)
        assert sizes == sorted(set(sizes)) and sizes[-1] == m
        gaps = np.diff([0] + sizes)
        assert gaps.max() <= 32  # padding wastes at most 31 tokens


def _mixed_step():
    """Sequences 1 and 2 decode (contexts 7 and 3); 3 prefills 5 tokens after a cached prefix of 6; 4 prefills 3
    fresh tokens. Tables: 1 -> [2, 5], 2 -> [7], 3 -> [1, 4] kept + [8] new, 4 -> [9] new."""
    tables = {1: [2, 5], 2: [7], 3: [1, 4], 4: []}
    p = plan([1, 2, 3, 4], [1, 1, 5, 3], [6, 2, 6, 0], [11, 12, 20, 21, 22, 23, 24, 30, 31, 32],
             [2, 1, 2, 0], [0, 0, 1, 1], [8, 9], [1, 1, 1, 1])
    return build_step_inputs(p, tables, BS)


def test_fill_lays_out_decode_rows_prompt_rows_and_padding():
    inputs = _mixed_step()
    buf = MixedInputs(max_tokens=32, max_decode_rows=16, max_blocks=4, device=torch.device("cpu"))
    buf.fill(inputs, inputs.token_ids, size=16, decode_rows=16)
    assert buf.device("input_ids", 16).tolist() == inputs.token_ids.tolist() + [0] * 6
    assert buf.device("slots", 16).tolist() == inputs.slots.tolist() + [-1] * 6  # padding writes no K/V
    assert buf.device("decode_context_lens", 16).tolist() == [7, 3] + [0] * 14  # past the decodes: nothing
    assert buf.tables("decode", 2)[:, :2].tolist() == [[2, 5], [7, 0]]
    cu = buf.device("prompt_cu_seqlens", MAX_PROMPT_SEQS + 1).tolist()
    assert cu[:3] == [2, 7, 10] and set(cu[3:]) == {10}  # absolute rows of q; padding sequences are empty
    assert buf.device("prompt_context_lens", MAX_PROMPT_SEQS).tolist() == [11, 3] + [0] * (MAX_PROMPT_SEQS - 2)
    assert buf.tables("prompt", 2)[:, :3].tolist() == [[1, 4, 8], [9, 0, 0]]
    # a smaller step afterwards re-pads what the bigger one used
    small = build_step_inputs(plan([5], [2], [0], [40, 41], [0], [1], [3], [1]), {5: []}, BS)
    buf.fill(small, small.token_ids, size=16, decode_rows=16)
    assert buf.device("slots", 4).tolist() == [12, 13, -1, -1]
    assert buf.device("decode_context_lens", 2).tolist() == [0, 0]
    assert buf.device("prompt_cu_seqlens", 3).tolist() == [0, 2, 2]


def test_which_steps_replay_a_mixed_graph():
    runner = object.__new__(MixedGraphRunner)  # no capture: the decision needs no GPU
    runner.sizes, runner.max_num_seqs = mixed_token_sizes(64), 8
    runner.inputs = MixedInputs(64, 8, max_blocks=4, device=torch.device("cpu"))
    assert runner.size_for(_mixed_step()) == 16  # 10 tokens
    many = build_step_inputs(plan(list(range(33)), [2] * 33, [0] * 33, [1] * 66, [0] * 33, [1] * 33,
                                  list(range(33)), [1] * 33), {i: [] for i in range(33)}, BS)
    assert runner.size_for(many) is None  # more prompt sequences than captured
    long = build_step_inputs(plan([1], [65], [0], [1] * 65, [0], [4], [0, 1, 2, 3], [1]), {1: []}, 32)
    assert runner.size_for(long) is None  # more tokens than the largest graph
    wide = build_step_inputs(plan([1], [3], [17], [1] * 3, [0], [5], [0, 1, 2, 3, 4], [1]), {1: []}, BS)
    assert runner.size_for(wide) is None  # a table wider than the static one


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fixed_row_attention_equals_the_eager_layout(dtype):
    """The same mixed step through triton_attention twice: with the eager metadata (the decode/prompt split as
    shapes) and with a graph's fixed rows (the split as data, padded to 16 rows); outputs and caches agree."""
    inputs = _mixed_step()
    hq, hkv, d, n = 4, 2, 16, len(inputs.token_ids)
    g = torch.Generator().manual_seed(0)
    k_cache = torch.randn(12, BS, hkv, d, generator=g).to(dtype)
    v_cache = torch.randn(12, BS, hkv, d, generator=g).to(dtype)
    q, k, v = (torch.randn(16, h, d, generator=g).to(dtype) for h in (hq, hkv, hkv))
    rotary = RotaryEmbedding(d, 64, 10000.0, None)
    positions = torch.zeros(16, dtype=torch.int64)
    positions[:n] = torch.from_numpy(inputs.positions)
    eager = AttentionMetadata(
        slot_mapping=torch.from_numpy(inputs.slots), block_tables=torch.from_numpy(inputs.block_tables),
        context_lens=torch.from_numpy(inputs.context_lens.astype(np.int32)),
        cu_seqlens_q=torch.from_numpy(inputs.cu_seqlens), max_query_len=5, max_context_len=11, num_decode_seqs=2)
    caches_e = (k_cache.clone(), v_cache.clone())
    out_e = triton_attention(positions[:n], q[:n].clone(), k[:n].clone(), v[:n], rotary, *caches_e, eager, d ** -0.5)
    buf = MixedInputs(max_tokens=16, max_decode_rows=8, max_blocks=4, device=torch.device("cpu"))
    buf.fill(inputs, inputs.token_ids, size=16, decode_rows=8)
    fixed = buf.metadata(16, 8, BS)
    caches_f = (k_cache.clone(), v_cache.clone())
    out_f = triton_attention(positions, q.clone(), k.clone(), v, rotary, *caches_f, fixed, d ** -0.5)
    tol = dict(rtol=0, atol=0) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(out_f[:n], out_e, **tol)
    for c_f, c_e in zip(caches_f, caches_e):  # padding rows (slot -1) wrote nothing
        assert torch.equal(c_f, c_e)
