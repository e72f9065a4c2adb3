# Must run before anything imports triton: the kernels then execute in the interpreter on CPU tensors.
import os

os.environ["TRITON_INTERPRET"] = "1"
