"""wrk with a Lua script of ours: per-request logic in Lua, and a `done()` that writes the
summary (requests, wrk's error counts, latency percentiles, answers by status) as JSON."""

from __future__ import annotations

import json
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Appended to every script: per-thread status counts, merged in done() and written as JSON.
DONE = r"""
local threads = {}
statuses = {}
collected = {}

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function count_status(status)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local merged, lines = {}, {}
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("statuses")) do merged[code] = (merged[code] or 0) + n end
    for _, item in ipairs(t:get("collected")) do lines[#lines + 1] = item end
  end
  local parts = {}
  for code, n in pairs(merged) do parts[#parts + 1] = string.format('"%d": %d', code, n) end
  local e = summary.errors
  local f = io.open(OUT, "w")
  f:write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}, ' ..
    '"statuses": {%s}}',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, table.concat(parts, ", ")))
  f:close()
  if COLLECTED then
    local c = io.open(COLLECTED, "w")
    c:write(table.concat(lines, "\n"))
    c:close()
  end
end
"""


def lua_string(text: str) -> str:
    """A Lua long string holding `text` verbatim."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    errors: dict[str, int]
    latency_ms: dict[str, float]
    statuses: dict[int, int]
    collected: list[str]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def answered(self, low: int = 200, high: int = 300) -> int:
        return sum(n for code, n in self.statuses.items() if low <= code < high)

    @property
    def socket_errors(self) -> int:
        e = self.errors
        return e["connect"] + e["read"] + e["write"] + e["timeout"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "seconds": self.seconds,
            "rps": self.rps,
            "errors": self.errors,
            "latency_ms": self.latency_ms,
            "statuses": self.statuses,
        }


class Wrk:
    """One wrk process running `script` (its Lua, DONE appended) against `url`."""

    def __init__(
        self,
        folder: Path,
        name: str,
        url: str,
        script: str,
        *,
        connections: int,
        threads: int = 1,
        seconds: float = 10,
        timeout: str = "10s",
        collect: bool = False,
    ) -> None:
        self.out = folder / f"{name}.json"
        self.collected = folder / f"{name}.collected" if collect else None
        header = f"OUT = {lua_string(str(self.out))}\n"
        header += (
            f"COLLECTED = {lua_string(str(self.collected))}\n" if collect else "COLLECTED = nil\n"
        )
        self.script = folder / f"{name}.lua"
        self.script.write_text(header + script + DONE)
        self.argv = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={timeout}",
            "-s",
            str(self.script),
            url,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Wrk:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return self

    def interrupt(self) -> None:
        """Stop early: wrk prints and writes its summary on SIGINT."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def wait(self, timeout: float = 600) -> WrkResult:
        assert self.proc is not None
        output, _ = self.proc.communicate(timeout=timeout)
        if not self.out.exists():
            raise RuntimeError(f"wrk wrote no summary:\n{output.decode('utf-8', 'replace')}")
        data = json.loads(self.out.read_text())
        collected = (
            self.collected.read_text().split() if self.collected and self.collected.exists() else []
        )
        return WrkResult(
            requests=int(data["requests"]),
            seconds=data["duration_us"] / 1e6,
            errors={k: int(v) for k, v in data["errors"].items()},
            latency_ms={k: v / 1000 for k, v in data["latency_us"].items()},
            statuses={int(k): int(v) for k, v in data["statuses"].items()},
            collected=collected,
        )

    def run(self) -> WrkResult:
        return self.start().wait()
