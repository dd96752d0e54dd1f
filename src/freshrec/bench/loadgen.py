"""Open many keep-alive connections to a server and POST JSON bodies back to back, from another process.

Two generators, the same result (`LoadResult`):

- `wrk` (a native tool, `bash scripts/wrk.sh` installs it): `--threads` event-loop threads,
  `connections` connections, each sending the next of the given bodies as soon as its previous
  reply is in (closed loop). Its Lua hooks count the statuses (`WRK_SCRIPT`).
- an asyncio client (`python -m freshrec.bench.loadgen`, used when wrk is absent): one process, one
  event loop, raw HTTP/1.1 over asyncio streams (requests encoded once, replies read by their
  Content-Length), so a request costs the client a few tens of microseconds, not an HTTP library's.

Latencies are per request, from the write of its request to the last byte of its reply. Neither
corrects for coordinated omission (a closed loop measures what its clients saw). The asyncio
client leaves each connection's first request out (a warm-up: connection setup and the burst of
all first requests at once); wrk counts it, so its p99 and max include the start of the run.

    python -m freshrec.bench.loadgen --url http://127.0.0.1:8080/v1/rank --bodies bodies.jsonl \\
        --connections 64 --seconds 10          # prints one JSON object (LoadResult)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from freshrec.errors import RoleError

__all__ = ["LoadResult", "run_load", "wrk_path"]


@dataclass(frozen=True, kw_only=True)
class LoadResult:
    """What one load run saw; latencies in ms, `statuses` by HTTP status (as strings)."""

    generator: str
    connections: int
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    transport_errors: int


WRK_SCRIPT = r"""
local bodies = {}
for line in io.lines(os.getenv("FRESHREC_BODIES")) do bodies[#bodies + 1] = line end
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  counts = {}
  i = math.random(#bodies)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
-- paced (FRESHREC_INTERVAL_MS: ms between requests of one thread): each request takes the next
-- slot of the thread's schedule and waits for it; behind schedule, requests go at once
local pace = tonumber(os.getenv("FRESHREC_INTERVAL_MS") or "")
if pace then
  local ffi = require("ffi")
  ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } freshrec_ts;
             int clock_gettime(int clk, freshrec_ts *tp); ]]
  local ts = ffi.new("freshrec_ts")
  local function now_ms()
    ffi.C.clock_gettime(1, ts)
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end
  local due = nil
  function delay()
    local now = now_ms()
    if due == nil then due = now end
    due = due + pace
    if due <= now then return 0 end
    return math.floor(due - now + 0.5)
  end
end
function done(summary, latency, requests)
  local all = {}
  for _, t in ipairs(threads) do
    for s, n in pairs(t:get("counts")) do all[s] = (all[s] or 0) + n end
  end
  local parts = {}
  for s, n in pairs(all) do parts[#parts + 1] = string.format('"%d":%d', s, n) end
  local e = summary.errors
  io.write(string.format(
    'FRESHREC_WRK {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"transport_errors":%d,"statuses":{%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.timeout, table.concat(parts, ",")))
end
"""


def wrk_path() -> str | None:
    """The wrk binary on PATH, or None."""
    return shutil.which("wrk")


def _wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    words = (out.stdout + out.stderr).split()
    return f"wrk {words[1]}" if len(words) > 1 else "wrk"


def _run_wrk(
    wrk: str,
    url: str,
    bodies: Path,
    connections: int,
    seconds: float,
    threads: int,
    rate: float | None = None,
) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT)
        script = f.name
    try:
        cmd = [
            wrk, f"-t{min(threads, connections)}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            "--timeout", "10s", "-s", script, url,
        ]  # fmt: skip
        env = dict(os.environ, FRESHREC_BODIES=str(bodies))
        if rate is not None:  # each of the threads paces its share of `rate`
            env["FRESHREC_INTERVAL_MS"] = repr(1000.0 * min(threads, connections) / rate)
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 60, check=False)
    finally:
        os.unlink(script)
    line = next((x for x in out.stdout.splitlines() if x.startswith("FRESHREC_WRK ")), None)
    if line is None:
        msg = f"wrk gave no result (exit {out.returncode}): {(out.stderr or out.stdout)[-500:]}"
        raise RoleError(msg)
    r = json.loads(line.split(" ", 1)[1])
    dur = r["duration_us"] / 1e6
    return LoadResult(
        generator=f"{_wrk_version(wrk)} ({min(threads, connections)} threads"
        + (f", paced at {rate:.0f} req/s)" if rate is not None else ")"),
        connections=connections,
        seconds=round(dur, 3),
        requests=r["requests"],
        rps=round(r["requests"] / dur, 1),
        p50_ms=r["p50_us"] / 1e3,
        p99_ms=r["p99_us"] / 1e3,
        max_ms=r["max_us"] / 1e3,
        statuses={str(k): int(v) for k, v in sorted(r["statuses"].items())},
        transport_errors=int(r["transport_errors"]),
    )


# ---- the asyncio client --------------------------------------------------------------------------


async def _connection(
    host: str, port: int, requests: list[bytes], t_end: float, lat: list[float], statuses: dict[int, int]
) -> int:
    """One keep-alive connection sending `requests` round robin until t_end; returns transport errors."""
    errors = 0
    warm = False
    k = int.from_bytes(os.urandom(2), "little") % len(requests)
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while time.perf_counter() < t_end:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            k = (k + 1) % len(requests)
            t0 = time.perf_counter()
            writer.write(requests[k])
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            close = False
            for line in head.lower().split(b"\r\n")[1:]:
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
                elif line.startswith(b"connection:") and b"close" in line:
                    close = True
            await reader.readexactly(length)
            if warm:  # the first reply of a connection (its setup, the burst of all at once) is a warm-up
                lat.append(time.perf_counter() - t0)
                statuses[status] = statuses.get(status, 0) + 1
            warm = True
            if close:
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            errors += 1
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()
    return errors


async def _asyncio_load(url: str, bodies: list[bytes], connections: int, seconds: float) -> LoadResult:
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    head = f"POST {u.path or '/'} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
    requests = [head.encode() + b"content-length: %d\r\n\r\n%b" % (len(b), b) for b in bodies]
    lat: list[float] = []
    statuses: dict[int, int] = {}
    t0 = time.perf_counter()
    t_end = t0 + seconds
    errs = await asyncio.gather(
        *(_connection(host, port, requests, t_end, lat, statuses) for _ in range(connections))
    )
    dur = time.perf_counter() - t0
    a = np.asarray(lat) * 1e3 if lat else np.asarray([float("nan")])
    return LoadResult(
        generator="asyncio client (python, 1 process)",
        connections=connections,
        seconds=round(dur, 3),
        requests=len(lat),
        rps=round(len(lat) / dur, 1),
        p50_ms=round(float(np.percentile(a, 50)), 3),
        p99_ms=round(float(np.percentile(a, 99)), 3),
        max_ms=round(float(a.max()), 3),
        statuses={str(k): v for k, v in sorted(statuses.items())},
        transport_errors=sum(errs),
    )


def run_load(
    url: str,
    bodies: list[bytes],
    *,
    connections: int,
    seconds: float,
    threads: int = 2,
    use_wrk: bool = True,
    rate: float | None = None,
) -> LoadResult:
    """Drive `url` with `connections` keep-alive connections POSTing `bodies` (JSON, one per line
    when written out) for `seconds`, from another process: wrk when installed and `use_wrk`, else
    the asyncio client of this module. `rate` (wrk only): requests/s on a fixed schedule instead of
    back to back (a request waits for its slot; one behind schedule goes at once)."""
    with tempfile.TemporaryDirectory(prefix="freshrec-load-") as tmp:
        path = Path(tmp) / "bodies.jsonl"
        path.write_bytes(b"\n".join(bodies) + b"\n")
        wrk = wrk_path() if use_wrk else None
        if wrk is not None:
            return _run_wrk(wrk, url, path, connections, seconds, threads, rate)
        if rate is not None:
            msg = "a paced load needs wrk (bash scripts/wrk.sh)"
            raise RoleError(msg)
        cmd = [
            sys.executable, "-m", "freshrec.bench.loadgen", "--url", url, "--bodies", str(path),
            "--connections", str(connections), "--seconds", str(seconds),
        ]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, check=False)
        if out.returncode != 0:
            msg = f"the asyncio load generator failed (exit {out.returncode}): {out.stderr[-500:]}"
            raise RoleError(msg)
        return LoadResult(**json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="asyncio load generator: POST bodies over keep-alive connections")
    p.add_argument("--url", required=True)
    p.add_argument("--bodies", required=True, help="file of JSON bodies, one per line")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--seconds", type=float, default=10.0)
    a = p.parse_args(argv)
    bodies = [line for line in Path(a.bodies).read_bytes().splitlines() if line.strip()]
    res = asyncio.run(_asyncio_load(a.url, bodies, a.connections, a.seconds))
    print(json.dumps(asdict(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
