"""Stop strings applied to a stream of text pieces, the same way for every backend.

OpenAI-style servers report ``finish_reason: "stop"`` both for the end-of-sequence token and
for a stop string, and a stream may split a stop string across pieces (``"</en"``, ``"d>"``).
:class:`StopMatcher` sees every piece, releases only text that cannot be the start of a stop
string, and cuts the output before the first stop string — so the caller knows *that* a stop
string ended the output (FINISH_REASON_STOP_SEQUENCE) and never receives part of one.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Feed pieces with :meth:`feed`; :meth:`flush` at the end releases what was held back."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped: str | None = None
        """The stop string that ended the output, once one did."""
        self._longest = max((len(s) for s in self.stops), default=0)

    def feed(self, piece: str) -> str:
        """The text of ``piece`` (and of earlier held-back text) that is safe to release;
        empty once a stop string has been seen (later pieces are ignored)."""
        if self.stopped is not None:
            return ""
        if not self.stops:
            return piece
        text = self._held + piece
        first: tuple[int, str] | None = None
        for stop in self.stops:
            i = text.find(stop)
            if i >= 0 and (first is None or i < first[0]):
                first = (i, stop)
        if first is not None:
            self.stopped = first[1]
            self._held = ""
            return text[: first[0]]
        # Hold back the longest suffix that is a prefix of some stop string.
        keep = 0
        for n in range(min(len(text), self._longest - 1), 0, -1):
            tail = text[-n:]
            if any(stop.startswith(tail) for stop in self.stops):
                keep = n
                break
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What was held back (the output ended without completing a stop string)."""
        out, self._held = ("" if self.stopped is not None else self._held), ""
        return out
