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


def send_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode()
    sock.sendall(HEADER.pack(len(data)) + data)


def recv_frame(sock: socket.socket) -> dict[str, Any] | None:
    """One message, or None when the peer closed the connection."""
    header = _recv_exact(sock, HEADER.size)
    if header is None:
        return None
    data = _recv_exact(sock, HEADER.unpack(header)[0])
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
