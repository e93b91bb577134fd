"""The wire protocol between the runner and a forked child: length-prefixed JSON frames.

A frame is a 4-byte big-endian length and that many bytes of JSON. The runner sends one request;
the child answers `{"pid"}`, then one `{"snippet"}` per snippet run and `{"done"}`; the fork
server adds `{"exit"}` with the child's exit status once the child has exited (`kb.run.server`).
"""
from __future__ import annotations

import json
import socket
import struct
from typing import Any

HEADER = struct.Struct("!I")
# Bytes of one frame beyond the output it may carry (four times the output cap: stdout and
# stderr, escaped): checks, figures, the traceback. A larger frame is refused before it is read.
MAX_FRAME = 64 << 20


class FrameTooLarge(ValueError):
    pass


def send_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode()
    sock.sendall(HEADER.pack(len(data)) + data)


def recv_frame(sock: socket.socket, limit: int | None = None) -> dict[str, Any] | None:
    """One message, or None when the peer closed the connection; FrameTooLarge past `limit` bytes."""
    header = _recv_exact(sock, HEADER.size)
    if header is None:
        return None
    size = HEADER.unpack(header)[0]
    if limit is not None and size > limit:
        raise FrameTooLarge(f"a snippet's evidence was {size / 2**20:.0f} MiB, over the runner's limit of "
                            f"{limit / 2**20:.0f} MiB (figures, checks and messages together); the run was stopped")
    data = _recv_exact(sock, size)
    return None if data is None else json.loads(data)


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
