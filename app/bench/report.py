"""What every benchmark report shares: numbers, the machine line, and the verdicts, warnings and
failures it ends with, in markdown."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def number(value: float | None, fmt: str) -> str:
    """A figure for a table: `-` for a missing or NaN one."""
    if value is None or value != value:
        return "-"
    return format(value, fmt)


def machine_line(machine: dict[str, Any], database: str, sharing: str) -> str:
    """`Machine: …` with what shares its cores."""
    m = machine
    return (
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB, Python {m['python']}; "
        f"{database}; {sharing}"
    )


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
