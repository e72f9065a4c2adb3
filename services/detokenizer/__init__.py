"""Detokenizer: turns the scheduler's token ids into text deltas, applies stop strings, and
routes each output back to the gateway the request came from."""
