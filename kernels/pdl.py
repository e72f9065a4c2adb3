"""Programmatic dependent launch (PDL, Hopper and later): let a kernel start while the one before it ends.

A one-token decode step is ~330 short kernels in a row, and each one normally starts only after the one
before it has finished and flushed: the GPU pays a launch's latency and a ramp-up at every boundary, and
the weight reads of a projection wait for a norm or an all-reduce that reads almost nothing. Launched
with PDL, a kernel's programs may start as soon as every program of the kernel before it has called
`gdc_launch_dependents()`; each then calls `gdc_wait()`, which returns once that kernel has completed
and its writes are visible, before touching anything the kernel before it wrote.

The kernels here follow two rules, which make PDL safe in any order of kernels:
- nothing but loads of data no kernel writes (weights) comes before `gdc_wait()`; every store after it;
- `gdc_launch_dependents()` only where every program of the kernel is running (the call completes once
  all programs make it), so a waiting dependent can never hold back a program of the kernel it waits on.

On a GPU before Hopper, on the CPU (the interpreter has no grid-dependency control) or once the caller
has called set_enabled(False) (the model runner does, from the FERRY_PDL knob in shared/knobs.py), kernels
launch as usual and the calls compile away. Kernels never read the environment themselves.
"""
import torch
import triton
import triton.language as tl

ENABLED = True  # read at each launch, so a CUDA graph keeps the choice made when it was captured


def set_enabled(on: bool) -> None:
    """Whether kernels launched from now on use PDL (where the GPU can): set once at start-up, before any
    kernel compiles or a CUDA graph is captured."""
    global ENABLED
    ENABLED = bool(on)


_capable: dict[int, bool] = {}


def use_pdl(t: torch.Tensor) -> bool:
    """Whether kernels working on `t` launch with PDL: a CUDA tensor on compute capability 9.0 or later."""
    if not ENABLED or not t.is_cuda:
        return False
    idx = t.device.index if t.device.index is not None else torch.cuda.current_device()
    if idx not in _capable:
        _capable[idx] = torch.cuda.get_device_capability(idx)[0] >= 9
    return _capable[idx]


def launch_options(t: torch.Tensor) -> dict:
    """Keyword arguments for a kernel launch: USE_PDL for the kernel and, when on, launch_pdl for Triton."""
    on = use_pdl(t)
    return {"USE_PDL": on, "launch_pdl": True} if on else {"USE_PDL": False}


@triton.jit
def pdl_start(USE_PDL: tl.constexpr):
    """The opening of a kernel that reads the kernel before's output at once: let the next kernel start
    (every program of this one is running once all have made this call), then wait for the one before."""
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
