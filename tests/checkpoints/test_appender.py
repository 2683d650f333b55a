"""The appender's write-behind thread: data intact, write-back done on the way, errors raised."""

from __future__ import annotations

import errno
import os
import time

import pytest

from torchgraft.checkpoints import appender
from torchgraft.checkpoints.appender import Appender, WriteBehind


@pytest.fixture
def small_window(monkeypatch):
    monkeypatch.setattr(WriteBehind, "WINDOW", 1 << 16)
    monkeypatch.setattr(Appender, "BUFFER", 1 << 12)


def _payload(n: int) -> bytes:
    """``n`` bytes with no period that divides a window or a buffer (251 is prime)."""
    period = bytes((i * 7 + 3) % 251 for i in range(251))
    return (period * (n // 251 + 1))[:n]


def test_bytes_written_and_synced_behind_the_writer(tmp_path, small_window, monkeypatch):
    synced: list[int] = []
    real = appender._datasync
    monkeypatch.setattr(appender, "_datasync", lambda fd: (synced.append(os.fstat(fd).st_size), real(fd)))
    data = _payload(1 << 20)
    out = Appender(tmp_path / "out.bin")
    for i in range(0, len(data), 1 << 14):
        out.write(memoryview(data[i:i + (1 << 14)]))
        if i == 1 << 17:  # two windows in: the thread syncs while the writer waits
            deadline = time.monotonic() + 10
            while not synced and time.monotonic() < deadline:
                time.sleep(0.01)
    out.write(memoryview(data[:3 << 18]))  # one large write, past the gathering buffer
    assert out.finish() == len(data) + (3 << 18)
    out.close()
    assert (tmp_path / "out.bin").read_bytes() == data + data[:3 << 18]
    assert synced and synced == sorted(synced) and synced[0] >= WriteBehind.WINDOW


def test_small_file_starts_no_thread(tmp_path, monkeypatch):
    monkeypatch.setattr(appender, "_datasync", lambda fd: pytest.fail("synced a small file"))
    out = Appender(tmp_path / "small.bin")
    out.write(memoryview(b"x" * 1000))
    assert out.finish() == 1000
    out.close()


def test_a_write_back_error_reaches_the_writer(tmp_path, small_window, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(appender, "_datasync", full)
    out = Appender(tmp_path / "out.bin")
    with pytest.raises(OSError, match="No space left on device"):
        for _ in range(64):
            out.write(memoryview(_payload(1 << 20)))
        out.finish()
    out.close()
    assert out.fd == -1
