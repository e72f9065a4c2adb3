"""`ferry bench`: a load generator against a running ferry (or, with --hf-baseline, transformers in-process)."""
