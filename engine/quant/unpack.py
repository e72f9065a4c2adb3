"""4-bit integers out of the int32 words the checkpoint formats pack them in (eight per word)."""
from __future__ import annotations

import torch

SEQUENTIAL = (0, 1, 2, 3, 4, 5, 6, 7)  # GPTQ, compressed-tensors: value i of a word in bits 4i..4i+3
# AutoAWQ's GEMM packer puts the word's values 0..7 at nibbles 0, 2, 4, 6, 1, 3, 5, 7 (AWQ_ORDER), so value
# r sits at nibble AWQ_NIBBLE_OF[r].
AWQ_NIBBLE_OF = (0, 4, 1, 5, 2, 6, 3, 7)


def unpack_int4(packed: torch.Tensor, dim: int, nibble_of: tuple[int, ...] = SEQUENTIAL) -> torch.Tensor:
    """int32 words -> their 4-bit values 0..15 (int32), eight per word along `dim`."""
    shifts = 4 * torch.tensor(nibble_of, dtype=torch.int32, device=packed.device)
    words = packed.movedim(dim, -1)
    values = (words.unsqueeze(-1) >> shifts) & 0xF  # an arithmetic shift: the mask drops the sign bits
    return values.flatten(-2).movedim(-1, dim)
