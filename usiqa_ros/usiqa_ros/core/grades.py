"""Names of the five quality grades (QualityScore GRADE_POOR..GRADE_EXCELLENT = 1..5; 0 = not scored)."""

from __future__ import annotations

GRADE_NAMES: dict[int, str] = {1: "poor", 2: "fair", 3: "good", 4: "very good", 5: "excellent"}


def grade_name(grade: int) -> str:
    """'poor'..'excellent'; 'unknown' for 0 (GRADE_UNKNOWN) and anything out of range."""
    return GRADE_NAMES.get(grade, "unknown")
