"""A Zenoh session from a ZenohConfig: only the endpoints named there, nothing discovered."""

from __future__ import annotations

import json

import zenoh

from sop_ros.configs.bridge import ZenohConfig


def session_config(config: ZenohConfig) -> zenoh.Config:
    settings = {
        "mode": config.mode,
        "listen/endpoints": list(config.listen),
        "connect/endpoints": list(config.connect),
        # No multicast or gossip discovery: a session reaches exactly the endpoints it names.
        "scouting/multicast/enabled": False,
        "scouting/gossip/enabled": False,
        "transport/shared_memory/enabled": config.shared_memory,
    }
    zconfig = zenoh.Config()
    for key, value in settings.items():
        zconfig.insert_json5(key, json.dumps(value))
    return zconfig


def open_session(config: ZenohConfig) -> zenoh.Session:
    """Open a session; raises RuntimeError naming the endpoints when Zenoh refuses (e.g. a port in use)."""
    try:
        return zenoh.open(session_config(config))
    except zenoh.ZError as err:
        raise RuntimeError(f"cannot open a Zenoh session (listen {list(config.listen)}, connect "
                           f"{list(config.connect)}): {err}") from None  # fmt: skip
