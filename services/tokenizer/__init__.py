"""Tokenizer workers: chat templates, encoding and length checks, fed round-robin by gateways."""
