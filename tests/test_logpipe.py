"""A worker's log writes through its socket to the supervisor's log: plain records and blocks of
framed impressions arrive in order, byte for byte, into a real local log (by `append_frames`) or
record by record into a log without it."""

from __future__ import annotations

import socket
import threading

import pytest

from freshrec.errors import LogError
from freshrec.serve.logpipe import ForwardedLog, LogLink, LogPump
from freshrec.serve.writers import feature_records, impression_block
from freshrec.stream.local_frames import seal_frames
from freshrec.stream.local_log import LocalBackend

REQUESTS = [
    ("r1", 7, [5, -12, 2**63 - 1], {"tags": [1, 2]}, {"price": 1.5}, 100.0),
    ("r2", 8, [3], {}, {}, 101.25),
]


class AppendOnly:
    """A real local log seen through `append` and `flush` only (as a Kafka log is)."""

    def __init__(self, log):
        self.log = log

    def append(self, value, key=None):
        return self.log.append(value, key=key)

    def flush(self):
        self.log.flush()


def _want() -> list[tuple[bytes | None, bytes]]:
    out: list[tuple[bytes | None, bytes]] = [(b"k0", b"first")]
    for rid, user, items, sparse, dense, ts in REQUESTS:
        values = feature_records(rid, user, items, sparse, dense, ts)
        out += [(f"{rid}:{i}".encode(), v) for i, v in enumerate(values)]
    return [*out, (None, b"last")]


@pytest.mark.parametrize("frames_path", [True, False], ids=["append_frames", "record_by_record"])
def test_blocks_and_records_reach_the_supervisors_log_in_order(tmp_path, frames_path):
    backend = LocalBackend(tmp_path / "logs")
    real = backend.log("features")
    target = real if frames_path else AppendOnly(real)
    mine, theirs = socket.socketpair()
    ready = threading.Event()
    pump = LogPump(mine, [target], [threading.Lock()], on_ready=ready.set).start()
    fwd = ForwardedLog(LogLink(theirs), 0, name="features")
    fwd.append(b"first", key=b"k0")
    buf, ends, key_lens = impression_block(REQUESTS)
    seal_frames(buf, ends, key_lens)
    fwd.append_frames(buf, ends)
    fwd.append(b"last")
    fwd.flush()  # answered once the supervisor's log flushed everything before it
    got = [(r.key, r.value) for r in real.consumer("check").poll(1000)]
    assert got == _want()
    assert pump.appended == len(_want())
    # a block whose frames do not chain is refused, nothing of it appended, and the worker told
    fwd.append_frames(buf, ends[:-1] + 1)
    with pytest.raises(LogError):
        fwd.flush()
    assert len(real.consumer("again").poll(1000)) == len(_want())
    theirs.close()
    pump.join()
    backend.close()
