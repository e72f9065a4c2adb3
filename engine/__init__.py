"""ferry's engine: models, weights, paged KV cache, scheduling and sampling, as plain modules."""
