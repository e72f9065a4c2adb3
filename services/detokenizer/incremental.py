"""Incremental detokenization and stop strings, one sequence at a time (no sockets here)."""
from __future__ import annotations

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Decodes a growing list of token ids into text deltas.

    Each step decodes a short window [prefix_offset:] and emits what it adds beyond the text of
    [prefix_offset:read_offset]. Decoding a window rather than single tokens keeps tokenizers that
    drop a word's leading space at the start of a decode (SentencePiece) correct, and lets a UTF-8
    character split across tokens wait: while the window ends in U+FFFD we emit nothing.
    """

    def __init__(self, tokenizer, prompt_tail: list[int], skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids = list(prompt_tail)
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens,
                                     clean_up_tokenization_spaces=False)

    def push(self, new_ids) -> str:
        self.ids.extend(int(t) for t in new_ids)
        return self._advance(final=False)

    def flush(self) -> str:
        """At the end of the sequence: whatever is still held back (an unfinished character stays
        as U+FFFD then, exactly as a one-shot decode of the whole output would show it)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self.read_offset >= len(self.ids):
            return ""
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full_text = self._decode(self.ids[self.prefix_offset:])
        if not final and full_text.endswith(REPLACEMENT):
            return ""  # an incomplete UTF-8 sequence: wait for the tokens that finish it
        if len(full_text) <= len(prefix_text) and not final:
            return ""  # e.g. only skipped special tokens so far
        delta = full_text[len(prefix_text):]
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.ids)
        return delta


class StopChecker:
    """Finds stop strings in streamed text, holding back any tail that might start one.

    Text is released only once no stop string can begin inside it, so a stop string that spans
    tokens is never sent (unless include_stop_str_in_output), and only pending text is searched:
    released text cannot hold the start of a match (see push)."""

    def __init__(self, stops: list[str], include_stop: bool = False):
        self.stops = [s for s in stops if s]
        self.include_stop = include_stop
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to send, whether a stop string ended the sequence)."""
        if not self.stops:
            return text, False
        self.pending += text
        hit = None
        for s in self.stops:
            i = self.pending.find(s)
            if i >= 0 and (hit is None or i < hit[0]):
                hit = (i, s)
        if hit is not None:
            i, s = hit
            out = self.pending[: i + (len(s) if self.include_stop else 0)]
            self.pending = ""
            return out, True
        hold = self._held_back()
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out

    def _held_back(self) -> int:
        """Length of the longest suffix of pending that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(s[:k]):
                    best = k
                    break
        return best
