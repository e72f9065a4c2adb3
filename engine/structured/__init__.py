"""Grammar-constrained decoding (issue 15): specs compiled by xgrammar, matchers in the runner, token bitmasks."""
