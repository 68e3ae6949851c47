"""Draft tokens looked up in a sequence's own text, for greedy decoding that checks several
tokens per step (prompt lookup decoding, as transformers' ``prompt_lookup_num_tokens``).

A decoding step reads every weight of the model whatever the number of tokens it runs, so on
hardware where a step is bound by memory, checking a few guessed tokens costs little more than
running one. The guess: find the latest earlier place where the sequence's last n tokens
occurred (n from ``max_ngram`` down to ``min_ngram``) and propose the tokens that followed
there. Greedy decoding keeps a drafted token only while it equals the model's own choice, so
the generated text is the same as one token at a time (up to float rounding); the drafts only
decide how many tokens one step can keep. Few-shot prompts and answers repeat their own
phrases (numbers of the question, ``<<48/2=24>>24``, a loop of a small model), so many drafts hold.
"""

from __future__ import annotations

from collections.abc import Sequence


class NgramDrafter:
    """The latest occurrence of each n-gram of a growing token sequence, and the drafts it gives.

    Args:
        tokens: the sequence so far (the prompt).
        max_ngram, min_ngram: the longest and shortest tail looked up (longest first).
    """

    def __init__(self, tokens: Sequence[int], *, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.sizes = range(max_ngram, min_ngram - 1, -1)
        self.tokens: list[int] = []
        # (n-gram) -> end of its latest occurrence, for every n-gram but the current tail's.
        self.seen: dict[tuple[int, ...], int] = {}
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        """Extend the sequence by ``token``."""
        tokens, end = self.tokens, len(self.tokens)
        for n in self.sizes:  # the tails ending at ``end`` stop being the tail: index them
            if end >= n:
                self.seen[tuple(tokens[end - n :])] = end
        tokens.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens that followed the latest earlier occurrence of the tail.

        When that occurrence overlaps the tail (a repeating pattern of period p), the draft
        continues the pattern past the sequence's end.
        """
        tokens, end = self.tokens, len(self.tokens)
        if limit < 1:
            return []
        for n in self.sizes:
            if end < n:
                continue
            start = self.seen.get(tuple(tokens[end - n :]))
            if start is None:
                continue
            period = end - start
            return [tokens[start + i % period] for i in range(limit)]
        return []
