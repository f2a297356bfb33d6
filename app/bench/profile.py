"""Sampling the server with py-spy while a phase runs, and summarising the collapsed stacks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class HotFunction:
    """A function's share of the active samples (py-spy leaves idle threads out): own = at the
    top of the stack, total = anywhere on it (each stack counted once)."""

    function: str
    own_pct: float
    total_pct: float


@dataclass(frozen=True, slots=True)
class ProfileSummary:
    """The top functions of one recording."""

    samples: int
    path: str
    by_own: list[HotFunction]
    by_total: list[HotFunction]


def py_spy_path() -> str | None:
    """py-spy next to this interpreter (the dev extra), else on PATH."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def start_recording(
    pid: int, output: Path, duration: int, *, fmt: str = "raw"
) -> subprocess.Popen[bytes]:
    """Sample `pid` and its children for `duration` seconds (non-blocking sampling, so the
    server is not paused; idle threads are left out)."""
    exe = py_spy_path()
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy, or the dev extra)")
    args = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--nonblocking",
        "--duration",
        str(duration),
        "--format",
        fmt,
        "--output",
        str(output),
    ]
    if fmt == "raw":
        args.append("--nolineno")
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _frames(stack: str) -> list[str]:
    frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
    return frames


def summarise(raw: Path, top: int = 15) -> ProfileSummary:
    """Own and total shares per function from py-spy's raw (collapsed stack) output."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count

    def share(counter: Counter[str]) -> list[HotFunction]:
        return [
            HotFunction(name, 100 * own[name] / samples, 100 * total[name] / samples)
            for name, _ in counter.most_common(top)
        ]

    if not samples:
        return ProfileSummary(0, str(raw), [], [])
    # The trunk (runpy, typer, uvicorn.run, the event loop's run) sits under nearly every
    # sample and says nothing; the framework's layers wrap everything too. By total time, rank
    # the project's own functions (app/…) below the trunk: where each request's time goes.
    trunk = 0.9 * max(total.values())
    branches: Counter[str] = Counter({k: v for k, v in total.items() if v < trunk and "(app/" in k})
    return ProfileSummary(samples, str(raw), share(own), share(branches))
