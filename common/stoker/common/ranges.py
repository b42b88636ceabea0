"""Half-open ranges of global sample positions, as text ("1600:1664,2000:2064") and as sorted,
merged lists: what health rollbacks skip. One place for the trainer (stoker.worker.health) and
the operator (policy_health: status.health.skip), which must agree on the text. Pure."""
from __future__ import annotations


def parse_ranges(text: str, field: str) -> list[tuple[int, int]]:
    """``"1600:1664,2000:2064"`` -> [(1600, 1664), (2000, 2064)] (half-open sample positions)."""
    out = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        lo, sep, hi = part.partition(":")
        try:
            a, b = int(lo), int(hi)
        except ValueError:
            raise ValueError(f"{field}: {part!r} is not START:END (sample positions, e.g. 1600:1664)") from None
        if not sep or a < 0 or b <= a:
            raise ValueError(f"{field}: {part!r} must be START:END with 0 <= START < END")
        out.append((a, b))
    return merge_ranges(out)


def merge_ranges(ranges: list[tuple[int, int]] | list[list[int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted((int(a), int(b)) for a, b in ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def format_ranges(ranges: list[tuple[int, int]]) -> str:
    return ",".join(f"{a}:{b}" for a, b in ranges)
