"""The grammar-mask kernel (issue 15) against its torch reference, in the Triton interpreter."""
import pytest
import torch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_bitmask_matches_torch(dtype):
    from kernels import apply_token_bitmask, apply_token_bitmask_ref

    torch.manual_seed(0)
    V = 300  # not a multiple of 32 nor of the interpreter's block: the last word and block are partial
    logits = torch.randn(5, V).to(dtype)
    mask = torch.randint(-2**31, 2**31 - 1, (3, (V + 31) // 32), dtype=torch.int32)
    mask[1] = 0
    mask[1, 9] = 1 << 5  # only token 9 * 32 + 5 allowed
    mask[2] = -1  # everything allowed (the sign bit is a token too)
    rows = torch.tensor([4, 0, 2], dtype=torch.int32)
    got, want = logits.clone(), logits.clone()
    apply_token_bitmask(got, mask, rows)
    apply_token_bitmask_ref(want, mask, rows)
    assert torch.equal(got, want)
    assert torch.equal(got[[1, 3]], logits[[1, 3]])  # rows without a mask are untouched
    assert torch.isfinite(got[0]).sum() == 1 and torch.isfinite(got[0, 9 * 32 + 5])
    assert torch.equal(got[2], logits[2])
    bit = (mask[0, 7] >> 3) & 1  # token 227 of row 4 follows its bit
    assert torch.isfinite(got[4, 227]) == bool(bit)
