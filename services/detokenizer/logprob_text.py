"""Logprobs that match the text a choice returns (issue 14), and a request's prompt tokens with theirs.

A token's logprob leaves with the text it starts: text held back (a possible stop string) holds its tokens'
logprobs back too, and when a choice ends, tokens whose text is not in the answer (a stop string cut away, an
EOS or other special token that decodes to nothing) are left out. Only choices that ask for logprobs use this.
"""
from __future__ import annotations

from collections import deque

from engine.prompt_logprobs import unpack_prompt_logprobs
from shared.codec import pack_ids
from shared.messages import PromptLogprobs, TokenLogprob


class AlignedLogprobs:
    """One choice: token logprobs waiting for the text they start to be released."""

    __slots__ = ("decoded", "released", "waiting")

    def __init__(self):
        self.decoded = 0  # characters the decoder has produced
        self.released = 0  # characters sent to the client
        self.waiting: deque[tuple[int, TokenLogprob]] = deque()  # (where its text starts, logprob)

    def decoded_text(self, logprobs: list[TokenLogprob], text: str) -> None:
        """The tokens of one step and the text the decoder made of them (credited to the step's first token)."""
        for lp in logprobs:
            self.waiting.append((self.decoded, lp))
        self.decoded += len(text)

    def released_text(self, text: str, finished: bool) -> list[TokenLogprob]:
        """The logprobs that go out with `text`; at the end, what is left has no text in the answer."""
        self.released += len(text)
        out = []
        while self.waiting and self.waiting[0][0] < self.released:
            out.append(self.waiting.popleft()[1])
        if finished:
            self.waiting.clear()
        return out


def prompt_token_logprobs(piece, prompt_ids: list[int], scores: PromptLogprobs) -> list[TokenLogprob]:
    """Every prompt token with its logprob, rank and top k; the first token has none (NaN: null in answers)."""
    lps, ranks, top_ids, top_vals = unpack_prompt_logprobs(scores)
    out = [TokenLogprob(piece(prompt_ids[0]), float("nan"))] if prompt_ids else []
    for i, tok in enumerate(prompt_ids[1:1 + len(lps)]):
        ids = top_ids[i].tolist()
        out.append(TokenLogprob(piece(tok), float(lps[i]), [piece(t) for t in ids], top_vals[i].tolist(),
                                int(ranks[i]), pack_ids(ids)))
    return out
