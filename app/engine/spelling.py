"""Did you mean: the known name a mistyped one likely misspells (an action name, a template's)."""

from collections.abc import Iterable
from difflib import SequenceMatcher

from rapidfuzz.distance import OSA

MAX_TYPO_EDITS = 2


def did_you_mean(name: str, known: Iterable[str]) -> str | None:
    """The known name `name` likely misspells: at most `MAX_TYPO_EDITS` edits away (a letter
    added, left out or changed, two side by side swapped; case ignored) and at most a third of
    its length (a two-letter name matches only a change of case); the fewest edits first, then
    the most alike (difflib's ratio), then by name. None when none is that close."""
    limit = min(MAX_TYPO_EDITS, len(name) // 3)
    scored = []
    for candidate in known:
        distance = edits(name.casefold(), candidate.casefold(), limit)
        if distance <= limit:
            alike = SequenceMatcher(None, name, candidate).ratio()
            scored.append((distance, -alike, candidate))
    return min(scored)[2] if scored else None


def edits(a: str, b: str, limit: int) -> int:
    """The optimal-string-alignment distance (Damerau-Levenshtein, each part edited once), or
    `limit + 1` when it is more than `limit` (rapidfuzz stops counting there)."""
    return int(OSA.distance(a, b, score_cutoff=limit))
