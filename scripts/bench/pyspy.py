"""Sampling profiles of a running gatebot with py-spy (when installed): record collapsed stacks
for a while, then summarize them as the functions with the most samples, inclusive and self."""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path

PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def available() -> bool:
    return Path(PY_SPY).exists()


def record(
    pid: int, seconds: float, out: Path, *, threads: bool = False
) -> subprocess.Popen[bytes]:
    argv = [PY_SPY, "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-r", "200"]
    argv += ["--format", "raw", "-o", str(out), "--nonblocking"]
    if not threads:
        argv.append("--gil")  # what holds the interpreter: the serving loop's real cost
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize(collapsed: Path, top: int = 15) -> dict[str, list[tuple[str, float]]]:
    """{"inclusive": [(frame, share)], "self": [(frame, share)]} over all samples."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    if not total:
        return {"inclusive": [], "self": []}
    return {
        "inclusive": [(f, n / total) for f, n in inclusive.most_common(top)],
        "self": [(f, n / total) for f, n in own.most_common(top)],
    }


def _short(frame: str) -> str:
    """'handle (aiohttp/web_protocol.py:123)' -> 'handle (aiohttp/web_protocol.py)'."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})" if where else name


def print_summary(title: str, summary: dict[str, list[tuple[str, float]]]) -> None:
    for kind in ("inclusive", "self"):
        print(f"\n{title}: top frames by {kind} share of samples")
        for frame, share in summary[kind]:
            print(f"  {share * 100:5.1f}%  {frame}")


# Where a sample's deepest recognized frame lies, first match wins (order matters).
CATEGORIES = (
    ("SQLite writes (write_batch)", "_direct_transaction"),
    ("SQLite via aiosqlite", "aiosqlite/"),
    ("logging", "logging/"),
    ("JSON", "json/"),
    ("signature and parsing (forges/)", "gatebot/forges/"),
    ("metrics middleware", "gatebot/api/metrics.py"),
    ("webhook handler", "gatebot/api/webhooks.py"),
    ("queue", "gatebot/queue.py"),
    ("aiohttp", "aiohttp/"),
    ("asyncio event loop", "asyncio/"),
    ("thread pool hand-off", "concurrent/futures"),
)


def categorize(collapsed: Path) -> list[tuple[str, float]]:
    """Each sample charged to the category of its deepest recognized frame."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        category = "other"
        for frame in reversed(stack.split(";")):
            hit = next((name for name, marker in CATEGORIES if marker in frame), None)
            if hit:
                category = hit
                break
        counts[category] += int(count)
    return [(name, n / total) for name, n in counts.most_common()] if total else []
