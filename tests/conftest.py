# Must run before anything imports triton, in every test module: Triton decides when a kernel is defined whether it
# runs in the interpreter, and engine modules import kernels at import time (engine/quant packs with kernels.w4a16),
# so a module collected before tests/kernels/ would otherwise define every kernel compiled, for a GPU there is not.
import atexit
import os
import shutil
import tempfile

import pytest

os.environ["TRITON_INTERPRET"] = "1"

# The suite loads the default model's GGUF about twenty times (every e2e server, the in-process references); parsing
# and dequantizing it is most of each start-up. The dequantized weights are cached for the session only, in a cache
# directory of its own (inherited by the servers tests start), so every run still dequantizes the GGUF once and the
# comparisons with transformers check what the cache holds.
_CACHE = tempfile.mkdtemp(prefix="ferry-test-cache-")
os.environ["FERRY_CACHE_DIR"] = _CACHE
os.environ["FERRY_GGUF_WEIGHT_CACHE"] = "1"
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def hf_default_model():
    """The default model in transformers, loaded from its GGUF once for the engine and end-to-end comparisons."""
    from fixtures.models import load_hf_default_model

    return load_hf_default_model()
