"""Minimal text edits between two versions of a string, and their replay onto a pycrdt
Text that others edited meanwhile (used by the three-way merge of outside file edits).

Index units: pycrdt's ``Text`` counts positions in UTF-8 bytes (yrs' default offset kind),
not in Python ``str`` code points, so ``apply_text_edits`` converts its indices.
"""

from __future__ import annotations

from bisect import bisect_left
from difflib import SequenceMatcher

from pycrdt import Text

__all__ = ["Edit", "apply_text_edits", "rebase_edits", "text_edits"]

# An edit of a str: replace s[start:end] with `text`.
Edit = tuple[int, int, str]

# Character-level diffing is quadratic in the worst case: a changed block above this many
# character pairs, or any block once a text has spent this budget, is replaced whole.
_CHAR_DIFF_BLOCK_LIMIT = 1_000_000
_CHAR_DIFF_BUDGET = 4_000_000


def _common_prefix_len(a: str, b: str) -> int:
    # Binary search on slices: comparisons run in C, O(n log n) overall.
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix_len(a: str, b: str) -> int:
    return _common_prefix_len(a[::-1], b[::-1])


def _line_starts(lines: list[str]) -> list[int]:
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    return starts


def _char_edits(a: str, b: str, offset: int, budget: list[int]) -> list[Edit]:
    """Character-level edits for one changed block (or one whole replacement if too big).
    `budget` is a one-item list: the character pairs this text may still spend."""
    cost = len(a) * len(b)
    if not a or not b or cost > _CHAR_DIFF_BLOCK_LIMIT or cost > budget[0]:
        return [(offset, offset + len(a), b)]
    budget[0] -= cost
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    return [
        (offset + i1, offset + i2, b[j1:j2])
        for tag, i1, i2, j1, j2 in matcher.get_opcodes()
        if tag != "equal"
    ]


def text_edits(a: str, b: str) -> list[Edit]:
    """Small edits turning `a` into `b`, in str indices, ascending and non-overlapping.

    Common prefix and suffix are cut first (the usual edit is one contiguous change),
    then the middle is diffed line by line, and changed line blocks char by char.
    autojunk stays on for lines (difflib's default for line diffs; off it is quadratic on
    long repetitive texts) and is off for characters (it would junk every common one).
    """
    if a == b:
        return []
    prefix = _common_prefix_len(a, b)
    suffix = _common_suffix_len(a[prefix:], b[prefix:])
    a_mid, b_mid = a[prefix : len(a) - suffix], b[prefix : len(b) - suffix]
    if not a_mid or not b_mid:
        return [(prefix, prefix + len(a_mid), b_mid)]
    a_lines, b_lines = a_mid.splitlines(True), b_mid.splitlines(True)
    a_starts, b_starts = _line_starts(a_lines), _line_starts(b_lines)
    edits: list[Edit] = []
    budget = [_CHAR_DIFF_BUDGET]
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, a_lines, b_lines).get_opcodes():
        if tag == "equal":
            continue
        a_block = a_mid[a_starts[i1] : a_starts[i2]]
        b_block = b_mid[b_starts[j1] : b_starts[j2]]
        edits.extend(_char_edits(a_block, b_block, prefix + a_starts[i1], budget))
    return edits


def _unchanged_segments(base: str, current: str) -> list[tuple[int, int, int]]:
    """Stretches of `base` that `current` still holds untouched: (base_start, base_end,
    current_start), ascending, covering base's start and end (possibly empty)."""
    segments: list[tuple[int, int, int]] = []
    base_pos = cur_pos = 0
    for start, end, text in text_edits(base, current):
        segments.append((base_pos, start, cur_pos))
        cur_pos += start - base_pos + len(text)
        base_pos = end
    segments.append((base_pos, len(base), cur_pos))
    return segments


def rebase_edits(edits: list[Edit], base: str, current: str) -> list[Edit]:
    """Move edits made against `base` onto `current`, which descends from `base`.

    Like a CRDT merge: deleting characters `current` already removed is a no-op, and an
    insertion into a region `current` rewrote lands right after that rewrite.
    """
    if base == current:
        return edits
    segments = _unchanged_segments(base, current)
    seg_starts = [seg[0] for seg in segments]
    rebased: list[Edit] = []
    for start, end, text in edits:
        point = _map_point(segments, seg_starts, start)
        deletions = _map_range(segments, start, end)
        if deletions and deletions[0][0] == point:
            first_start, first_end = deletions.pop(0)
            rebased.append((first_start, first_end, text))
        elif text:
            rebased.append((point, point, text))
        rebased.extend((s, e, "") for s, e in deletions)
    return rebased


def _map_point(segments: list[tuple[int, int, int]], seg_starts: list[int], pos: int) -> int:
    """Where base position `pos` is in current (after the current's own edits at `pos`)."""
    index = bisect_left(seg_starts, pos + 1) - 1  # last segment starting at or before pos
    base_start, base_end, cur_start = segments[index]
    if pos <= base_end:
        return cur_start + pos - base_start
    # pos fell inside a stretch current rewrote: continue right after the rewrite.
    return segments[index + 1][2]


def _map_range(segments: list[tuple[int, int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """The parts of base[start:end] current still holds, in current positions."""
    ranges: list[tuple[int, int]] = []
    for base_start, base_end, cur_start in segments:
        lo, hi = max(start, base_start), min(end, base_end)
        if lo < hi:
            ranges.append((cur_start + lo - base_start, cur_start + hi - base_start))
    return ranges


def apply_text_edits(ytext: Text, current: str, edits: list[Edit]) -> None:
    """Apply str-indexed edits to a pycrdt Text, whose indices are UTF-8 bytes.

    Edits go from the end so the positions of the earlier ones stay valid; `current`
    is never mutated, and the prefix before an edit is the same in it and in the Text.
    """
    ascii_only = current.isascii()
    # sorted() is stable, then reversed: two insertions at one point keep their order.
    for start, end, text in reversed(sorted(edits, key=lambda e: e[0])):
        if ascii_only:
            byte_start, byte_len = start, end - start
        else:
            byte_start = len(current[:start].encode("utf-8"))
            byte_len = len(current[start:end].encode("utf-8"))
        if byte_len:
            del ytext[byte_start : byte_start + byte_len]
        if text:
            ytext.insert(byte_start, text)
