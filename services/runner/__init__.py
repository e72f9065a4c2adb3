"""Runner: one process per GPU rank; owns the weights and the KV cache, executes step plans."""
