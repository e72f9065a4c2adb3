"""GPU checks and timing scripts, run from the repository root with `python -m benchmarks.NAME` (or
`bash benchmarks/NAME.sh` on a GPU host). Not part of the installed product: they import the product and
`fixtures/`, never `tests/`; `ferry bench` (services/bench) is the user-facing load generator."""
