"""A minimal standard-library websocket client for ComfyUI's `/ws?clientId=...` (progress messages and binary
preview frames), for the end-to-end tests."""
from __future__ import annotations

import base64
import json
import os
import socket
import struct
import threading
import urllib.parse


class WsListener:
    """Connects to `/ws?clientId=...` and collects, in a thread, text messages (decoded JSON) and binary frames as
    (kind, payload) with kind "json" or "binary". Only what ComfyUI's server sends is handled (no extensions)."""

    def __init__(self, url: str, client_id: str):
        u = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            byte = self.sock.recv(1)
            if not byte:
                raise ConnectionError(f"websocket handshake failed: {head!r}")
            head += byte
        assert head.startswith(b"HTTP/1.1 101"), head
        self.sock.settimeout(None)
        self.file = self.sock.makefile("rb")
        self.messages: list[tuple[str, object]] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _read(self, n: int) -> bytes:
        data = self.file.read(n)
        if len(data) < n:
            raise EOFError
        return data

    def _send(self, opcode: int, payload: bytes = b""):
        mask = os.urandom(4)
        assert len(payload) < 126
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def _loop(self):
        parts, first_opcode = [], None
        try:
            while True:
                b0, b1 = self._read(2)
                opcode, n = b0 & 0x0F, b1 & 0x7F
                if n == 126:
                    (n,) = struct.unpack(">H", self._read(2))
                elif n == 127:
                    (n,) = struct.unpack(">Q", self._read(8))
                mask = self._read(4) if b1 & 0x80 else None
                payload = self._read(n)
                if mask:
                    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                if opcode == 8:
                    break
                if opcode == 9:
                    self._send(10, payload)
                    continue
                if opcode in (1, 2):
                    parts, first_opcode = [payload], opcode
                elif opcode == 0:
                    parts.append(payload)
                else:
                    continue
                if b0 & 0x80:
                    data = b"".join(parts)
                    item = ("json", json.loads(data)) if first_opcode == 1 else ("binary", data)
                    with self.cond:
                        self.messages.append(item)
                        self.cond.notify_all()
        except (EOFError, OSError, ValueError):
            pass

    def wait_for(self, predicate, timeout: float) -> bool:
        """Wait until `predicate(messages)` is true; returns its last value."""
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.messages), timeout)

    def json(self, kind: str, prompt_id: str | None = None) -> list[dict]:
        with self.cond:
            return [m["data"] for k, m in self.messages if k == "json" and m.get("type") == kind
                    and (prompt_id is None or m["data"].get("prompt_id") == prompt_id)]

    def binary(self) -> list[bytes]:
        with self.cond:
            return [m for k, m in self.messages if k == "binary"]

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def finished(prompt_id: str):
    """Predicate: the websocket saw the end of `prompt_id` (success, error or interrupt)."""
    def done(messages):
        return any(k == "json" and m.get("type") in ("execution_success", "execution_error", "execution_interrupted")
                   and m["data"].get("prompt_id") == prompt_id for k, m in messages)
    return done

