"""Where the layer being built will run, so that it picks its implementation once, at build time.

ModelRunner builds the model under `with torch.device(...)`: the default device then is the model's. On
CUDA a layer keeps a Triton kernel from kernels/ (imported only then: a CPU install needs no triton);
elsewhere plain torch. A layer built on one device and moved to another keeps its first choice.
"""
from __future__ import annotations

import torch


def building_on_cuda() -> bool:
    return torch.get_default_device().type == "cuda"
