"""ferry's processes: gateway, tokenizer workers, scheduler, runner ranks, detokenizer, launcher."""
