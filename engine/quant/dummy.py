"""--load-format dummy with a quantized scheme: random values straight into the checkpoint-format tensors
(never a 16-bit copy of the model), about as large as the unquantized dummy weights (|w| <= 0.02)."""
from __future__ import annotations

import torch

from kernels.fp8_linear import FP8_DTYPE

ZEROS_8 = int.from_bytes(b"\x88\x88\x88\x88", "little", signed=True)  # eight 4-bit 8s in one int32
ROWS_PER_CHUNK = 4096  # FP8 weights are drawn this many rows at a time: a bounded 16-bit temporary


def fill_dummy(method, layer) -> None:
    for spec in method.specs:
        p = getattr(layer, spec.name).data
        if spec.name in ("qweight", "weight_packed"):
            p.copy_(torch.randint(-2**31, 2**31 - 1, p.shape, dtype=torch.int32, device=p.device))
        elif spec.name in ("qzeros", "weight_zero_point"):
            p.fill_(ZEROS_8)
        elif spec.name == "scales" or (spec.name == "weight_scale" and method.scheme.is_w4a16):
            p.fill_(0.02 / 8)
        elif spec.name == "g_idx":
            ids = torch.arange(p.shape[1], device=p.device) + layer.input_start  # the checkpoint's order
            p.copy_((ids // method.shape.group(method.scheme)).expand_as(p))
        elif spec.name == "weight_shape":
            p.copy_(torch.tensor([[n, layer.full_in_features] for n in layer.full_output_sizes]))
        elif spec.name == "weight":
            for rows in p.split(ROWS_PER_CHUNK):
                rows.copy_(torch.empty(rows.shape, dtype=torch.bfloat16, device=p.device).uniform_(-1, 1)
                           .to(FP8_DTYPE))
        elif spec.name in ("weight_scale", "input_scale"):
            p.fill_(0.02)
    if method.scheme.format == "fp8-online":
        layer.weight_scale.fill_(0.02)
