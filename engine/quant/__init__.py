"""Quantized checkpoints (issue 18): which scheme a model uses (`engine.quant.detect.read_scheme`), the
tensors each on-disk format stores (`engine.quant.formats`), and the layer method that loads them, turns them
into the kernels' layout once loaded and runs them (`engine.quant.method`)."""
