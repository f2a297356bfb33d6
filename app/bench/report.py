"""What every benchmark report ends with: its verdicts, warnings and failures, in markdown."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def verdict_lines(
    targets: Sequence[dict[str, Any]], warnings: Sequence[str], failures: Sequence[str]
) -> list[str]:
    """Markdown lines: each target met or MISSED, then warnings, then why the run failed."""
    lines: list[str] = []
    if targets:
        lines += ["", "Targets:"]
        lines += [
            f"- {'met' if t['met'] else 'MISSED'}: {t['target']} (measured {t['measured']})"
            for t in targets
        ]
    if warnings:
        lines += ["", "Warnings:"] + [f"- {w}" for w in warnings]
    if failures:
        lines += ["", "**RUN FAILED:**"] + [f"- {f}" for f in failures]
    return lines
