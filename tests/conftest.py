# Must run before anything imports triton, in every test module: Triton decides when a kernel is defined whether it
# runs in the interpreter, and engine modules import kernels at import time (engine/quant packs with kernels.w4a16),
# so a module collected before tests/kernels/ would otherwise define every kernel compiled, for a GPU there is not.
import os

os.environ["TRITON_INTERPRET"] = "1"
