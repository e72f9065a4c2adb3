"""Grammar masks (issue 15): set to -inf every logit whose token the row's grammar does not allow.

A mask row is xgrammar's packed bitmask: int32 words, bit j of word w allows token 32 * w + j. Only the constrained
rows of a batch have a mask row; `rows` says which logits row each one is, so unconstrained rows are never read.
One program per (mask row, BLOCK tokens): the write is a masked store of -inf, nothing else moves.
"""

import torch
import triton
import triton.language as tl

BLOCK = 4096  # tokens per program: 128 words of mask


@triton.jit
def _apply_bitmask_kernel(logits_ptr, mask_ptr, rows_ptr, V, stride_logits, stride_mask, BLOCK: tl.constexpr):
    r = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < V
    row = tl.load(rows_ptr + r).to(tl.int64)
    words = tl.load(mask_ptr + r * stride_mask + offs // 32, mask=inside, other=0)
    banned = ((words >> (offs % 32)) & 1) == 0
    tl.store(logits_ptr + row * stride_logits + offs, float("-inf"), mask=inside & banned)


def apply_token_bitmask(logits: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> None:
    """In place. logits [B, V] (any float dtype, unit stride along V); mask int32 [K, ceil(V / 32)] on the same
    device; rows int32/int64 [K]: the logits row of each mask row."""
    K = mask.shape[0]
    if K == 0:
        return
    V = logits.shape[1]
    assert logits.stride(1) == 1 and mask.shape[1] * 32 >= V
    block = BLOCK if logits.is_cuda else 128  # the interpreter: small blocks, so tests cross several
    _apply_bitmask_kernel[(K, triton.cdiv(V, block))](logits, mask, rows, V, logits.stride(0), mask.stride(0),
                                                      BLOCK=block, num_warps=4)


def apply_token_bitmask_ref(logits: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> None:
    """The same in plain torch (the CPU path)."""
    if mask.shape[0] == 0:
        return
    V = logits.shape[1]
    shifts = torch.arange(32, dtype=torch.int32, device=mask.device)
    allowed = ((mask.unsqueeze(-1) >> shifts) & 1).flatten(1)[:, :V].bool()
    idx = rows.long()
    logits[idx] = logits[idx].masked_fill(~allowed, float("-inf"))
