"""A policy served elsewhere (an openpi policy server, `serve_policy.py`), run on the robot as its own policy class.

openpi's wire protocol, over one websocket: binary msgpack messages in which every numpy array is a map
{"__ndarray__": true, "data": its bytes, "dtype": its dtype string, "shape": its shape}. On connect the server
sends its metadata (a map); then each request is an observation map and each reply a map holding `actions`, an
action chunk (steps, action_dim). A server that fails sends its traceback as a text message and closes.

Name it in the robot's YAML: `policy_class: "sop_ros.model.remote_policy:WebsocketPolicy"` with `policy_args`
from `WebsocketPolicy`'s arguments. Inference then runs where the server runs; the robot still chunks, records,
and holds when a reply does not come, or comes malformed (the node's ERROR state, with the reason).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack
import numpy as np
import websockets.exceptions
import websockets.sync.client

from sop_ros.model.policy import Observation, PolicyResult

NDARRAY = "__ndarray__"


# -- openpi's msgpack with numpy arrays ---------------------------------------------------------------------------


def _encode(obj: object) -> object:
    """msgpack's hook for what it cannot pack itself: numpy arrays and scalars (as 0-d arrays)."""
    if isinstance(obj, np.generic):
        obj = np.asarray(obj)
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "VOc":  # structured, object and complex arrays have no portable bytes
            raise ValueError(f"cannot send an array of dtype {obj.dtype}")
        return {NDARRAY: True, "data": np.ascontiguousarray(obj).tobytes(), "dtype": obj.dtype.str,
                "shape": list(obj.shape)}  # fmt: skip
    raise TypeError(f"cannot send a {type(obj).__name__}")


def _decode(obj: dict) -> object:
    """msgpack's hook for every map read: an encoded array back to numpy (openpi's packer writes the keys as
    bytes, others as text: both are read)."""
    if obj.get(NDARRAY) or obj.get(NDARRAY.encode()):
        get = lambda k: obj[k] if k in obj else obj[k.encode()]  # noqa: E731
        return np.frombuffer(get("data"), dtype=np.dtype(get("dtype"))).reshape(get("shape"))
    return obj


def packb(obj: object) -> bytes:
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes) -> object:
    return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)


# -- the client ---------------------------------------------------------------------------------------------------


class WebsocketPolicy:
    """The robot's policy as an openpi policy server at ws://host:port computes it.

    The observation goes as openpi's examples lay it out: each camera's image as uint8 (height, width, 3) under
    its key of `image_keys` (in the ingest node's camera order; empty: "observation/<camera>"), the joint state
    under `state_key`, the episode's instruction under `prompt_key`; `extra` is added as is (constant keys a
    server expects). The reply's `actions_key` is the chunk; `action_steps` > 0 keeps its first that many steps.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8000, image_keys: Sequence[str] = (),
                 state_key: str = "observation/state", prompt_key: str = "prompt", actions_key: str = "actions",
                 action_steps: int = 0, extra: dict | None = None, connect_timeout_s: float = 10.0,
                 reply_timeout_s: float = 10.0) -> None:  # fmt: skip
        if not 0 < int(port) < 65536:
            raise ValueError(f"port={port!r}: must be in 1..65535")
        if action_steps < 0:
            raise ValueError(f"action_steps={action_steps!r}: must be >= 0 (0: the whole chunk)")
        self.uri = f"ws://{host}:{int(port)}"
        self.image_keys = tuple(image_keys)
        self.state_key, self.prompt_key, self.actions_key = state_key, prompt_key, actions_key
        self.action_steps = action_steps
        self.extra = dict(extra or {})
        self.connect_timeout_s, self.reply_timeout_s = connect_timeout_s, reply_timeout_s
        self.metadata: dict = {}
        self._ws = None
        self.connect()  # at start: a server that is not there stops the robot's policy before the first episode

    @property
    def version(self) -> str:
        """What the server says it serves (its metadata's `version`, if any), else its address."""
        return str(self.metadata.get("version", "") or self.uri)

    def connect(self) -> None:
        """Open the websocket and read the server's metadata; ConnectionError says why not."""
        try:
            # No compression and no size limit: openpi's server sends uncompressed chunks of any size. legacy: the
            # connection is kept across calls (closed by `close`), not used as a context manager.
            ws = websockets.sync.client.connect(self.uri, open_timeout=self.connect_timeout_s, compression=None,
                                                max_size=None, legacy=True)  # fmt: skip
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as err:
            raise ConnectionError(f"policy server {self.uri}: cannot connect ({type(err).__name__}: {err}); is "
                                  f"it running?") from None  # fmt: skip
        try:
            metadata = self._receive(ws, "its metadata")
        except Exception:
            ws.close()
            raise
        if not isinstance(metadata, dict):
            ws.close()
            raise ValueError(f"policy server {self.uri}: sent {type(metadata).__name__} as its metadata, not a map")
        self._ws, self.metadata = ws, metadata

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def reset(self) -> None:
        """Nothing to forget here: openpi's protocol has no reset, and the server keeps no episode."""

    def observation(self, obs: Observation) -> dict:
        """`obs` as openpi's observation map."""
        cameras = obs.cameras or tuple(f"image_{i}" for i in range(len(obs.images)))
        keys = self.image_keys or tuple(f"observation/{cam}" for cam in cameras)
        if len(keys) != len(obs.images):
            raise ValueError(f"image_keys {list(keys)}: one key per camera, and the robot has {len(obs.images)} "
                             f"({list(cameras)})")  # fmt: skip
        message = dict(self.extra)
        for key, image in zip(keys, obs.images, strict=True):  # (3, S, S) in [0, 1] -> (S, S, 3) uint8
            message[key] = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
        message[self.state_key] = np.asarray(obs.proprio, dtype=np.float32)
        message[self.prompt_key] = obs.instruction
        return message

    def infer(self, obs: Observation) -> PolicyResult:
        if self._ws is None:  # the last call lost the connection: try once more, then fail again
            self.connect()
        message = packb(self.observation(obs))
        try:
            self._ws.send(message)
            reply = self._receive(self._ws, "a reply")
        except (websockets.exceptions.ConnectionClosed, OSError) as err:
            self.close()
            raise ConnectionError(f"policy server {self.uri}: lost the connection ({err})") from None
        except Exception:  # a failed or unreadable reply: the next request starts on a fresh connection
            self.close()
            raise
        if not isinstance(reply, dict) or self.actions_key not in reply:
            found = sorted(map(str, reply)) if isinstance(reply, dict) else type(reply).__name__
            raise ValueError(f"policy server {self.uri}: reply without {self.actions_key!r} (got {found})")
        actions = reply[self.actions_key]
        if not isinstance(actions, np.ndarray) or actions.ndim != 2 or not np.issubdtype(actions.dtype, np.number):
            shape = getattr(actions, "shape", type(actions).__name__)
            raise ValueError(f"policy server {self.uri}: {self.actions_key!r} is {shape}, not a numeric array "
                             f"(steps, action_dim)")  # fmt: skip
        if self.action_steps:
            actions = actions[: self.action_steps]
        return PolicyResult(actions.astype(np.float32), self.version)

    def _receive(self, ws, what: str) -> object:
        try:
            data = ws.recv(timeout=self.reply_timeout_s)
        except TimeoutError:
            raise ConnectionError(f"policy server {self.uri}: no {what} within {self.reply_timeout_s:g} s") from None
        except websockets.exceptions.ConnectionClosed as err:
            raise ConnectionError(f"policy server {self.uri}: closed the connection ({err})") from None
        if isinstance(data, str):  # openpi's server sends its traceback as text when inference fails
            raise RuntimeError(f"policy server {self.uri} failed: {data.strip()[-500:]}")
        try:
            return unpackb(data)
        except Exception as err:
            raise ValueError(f"policy server {self.uri}: sent {what} that is not msgpack ({err})") from None
