"""A stand-in openpi policy server for tests: one websocket on 127.0.0.1 (an ephemeral port), speaking openpi's
protocol with a fixed policy: metadata on connect, then for each observation a reply holding `actions`."""

from __future__ import annotations

import threading

import numpy as np
import websockets.sync.server

from sop_ros.model.remote_policy import packb, unpackb


class OpenpiServer:
    """`reply(observation) -> bytes | str` answers each request (default: `actions`, a constant chunk); every
    observation received is kept in `received`."""

    def __init__(self, action, steps: int = 5, metadata: dict | None = None, reply=None) -> None:
        self.chunk = np.tile(np.asarray(action, dtype=np.float32), (steps, 1))
        self.metadata = metadata if metadata is not None else {"version": "served-v1"}
        self.reply = reply or (lambda obs: packb({"actions": self.chunk, "server_timing": {"infer_ms": 1.0}}))
        self.received: list[dict] = []
        self.server = websockets.sync.server.serve(self.handle, "127.0.0.1", 0, compression=None, max_size=None)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, ws) -> None:
        ws.send(packb(self.metadata))
        for message in ws:  # ends when the client closes
            obs = unpackb(message)
            self.received.append(obs)
            ws.send(self.reply(obs))

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=5)
