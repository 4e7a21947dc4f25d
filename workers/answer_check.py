"""How much of each answer is compared with what it should be (`[workers] validate`).

Answers are checked in place: an answer that came back in shared memory is a numpy view straight
onto its output slot, compared with the pooled input (identity models) or with the expected row
(validation_data), never copied. A full comparison reads both buffers once, which for large
answers is memory-bound: about what writing the input into shared memory cost
(tools/bench/check_cost.py measures it). The modes:

- "all" (the default): every answer compared in full.
- "pages": every answer checked; one over PAGED_MIN_BYTES (256 KiB) is compared on its first and
  last 4 KiB page and on `validate_pages` random 4 KiB pages between them, one from each of that
  many equal stretches, drawn afresh for every answer from the worker's seeded generator, so over a
  run every page of an answer's layout is looked at. A sampled page that differs bit for bit sends
  the answer to the full comparison (which decides by value, as "all" does), so a wrong answer
  found is reported exactly as under "all", and "pages" never calls right what "all" calls wrong.
  Smaller answers are compared in full: at 256 KiB a full check costs about what drawing and
  comparing 18 pages does (37 us and 27 us of CPU with the buffers out of the caches, on the
  2-core machine of tools/bench/check_cost.py), below it less; above it, the sampled pages are at
  most 28 % of the answer and the saving grows with its size (at 4 MiB: 26 us against 491 us).
- "fraction": `validate_fraction` of the answers (drawn per answer from the seeded generator)
  compared in full, the others not compared at all.

An AnswerCheck holds the mode, the generator and the counters of what was checked and how;
workers/executor.py does the comparing.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

VALIDATE_MODES = ("all", "pages", "fraction")
PAGE_BYTES = 4096
PAGED_MIN_BYTES = 256 << 10  # answers larger than this are compared on sampled pages in "pages" mode
DEFAULT_PAGES = 16
DEFAULT_FRACTION = 0.1


class AnswerCheck:
    """The answer-checking mode of one executor, its seeded draws and its counters.

    Counters (cumulative): `answers_compared` answers compared (in full or on pages),
    `answers_sampled` of them passed on sampled pages for at least one output, never compared in
    full (one whose sampled page differs goes on to the full comparison and is not counted here),
    `answers_skipped` answers not compared at all ("fraction"), `outputs_sampled` outputs whose
    pages were drawn."""

    __slots__ = ("mode", "pages", "fraction", "paging", "_random", "answers_compared", "answers_sampled",
                 "answers_skipped", "outputs_sampled", "_stretches", "_stretches_of")

    def __init__(self, mode: str = "all", pages: int = DEFAULT_PAGES, fraction: float = DEFAULT_FRACTION,
                 seed: int | Sequence[int] = 0) -> None:
        if mode not in VALIDATE_MODES:
            raise ValueError(f"validate mode {mode!r}: choose one of {', '.join(VALIDATE_MODES)}")
        if pages < 1:
            raise ValueError(f"validate_pages {pages}: must be 1 or more")
        if not 0 < fraction <= 1:
            raise ValueError(f"validate_fraction {fraction:g}: must be above 0 and at most 1")
        self.mode = mode
        self.pages = int(pages)
        self.fraction = float(fraction)
        self.paging = mode == "pages"
        # random.Random: a draw costs tens of nanoseconds (numpy's Generator: about a microsecond a call).
        words = [seed] if isinstance(seed, int) else list(seed)
        self._random = random.Random(int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0]))
        self.answers_compared = 0
        self.answers_sampled = 0
        self.answers_skipped = 0
        self.outputs_sampled = 0
        self._stretches: list[tuple[int, int]] = []  # page_offsets: (first page, pages) of each stretch
        self._stretches_of = -1  # ... of an answer of this many bytes

    @property
    def not_fully_compared(self) -> int:
        """Answers passed without a full comparison: sampled on pages, or not compared at all."""
        return self.answers_sampled + self.answers_skipped

    def take(self) -> bool:
        """Whether this answer is compared (counted either way): always, but in "fraction" mode."""
        if self.mode == "fraction" and self._random.random() >= self.fraction:
            self.answers_skipped += 1
            return False
        self.answers_compared += 1
        return True

    def page_offsets(self, nbytes: int) -> list[int] | None:
        """Byte offsets of the PAGE_BYTES pages to compare of an answer of `nbytes`, or None when it
        is compared in full (not "pages" mode, at most PAGED_MIN_BYTES, or so few pages that the
        sample would be most of it). The first and the last page always; then one random page of
        each of `pages` equal stretches of the pages between them."""
        if not self.paging or nbytes <= PAGED_MIN_BYTES:
            return None
        interior = -(-nbytes // PAGE_BYTES) - 2  # whole pages between the first and the last
        if interior <= 2 * self.pages:
            return None
        self.outputs_sampled += 1
        if nbytes != self._stretches_of:
            # Where each stretch starts (page 1 is the first after the first page) and how many
            # pages it has, in whole pages: worked out once per answer size.
            bounds = [interior * i // self.pages for i in range(self.pages + 1)]
            self._stretches = [(1 + bounds[i], bounds[i + 1] - bounds[i]) for i in range(self.pages)]
            self._stretches_of = nbytes
        draw = self._random.random
        offsets = [0, nbytes - PAGE_BYTES]  # the last page ends with the answer (a partial one included)
        offsets += [(start + int(draw() * span)) * PAGE_BYTES for start, span in self._stretches]
        return offsets
