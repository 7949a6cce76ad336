"""A Zenoh session from a ZenohConfig: only the endpoints named there, nothing discovered; and queries answered
on threads of ours."""

from __future__ import annotations

import json
import logging
import queue
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import zenoh

from sop_ros.bridge.certificates import check_certificate
from sop_ros.configs.bridge import TlsConfig, ZenohConfig

_TLS = "transport/link/tls"


def session_config(config: ZenohConfig) -> zenoh.Config:
    """Zenoh's config for `config`; RuntimeError naming the field and file when a TLS or access-control file
    is missing or wrong (Zenoh itself would open a connecting session that just never connects)."""
    settings = {
        "mode": config.mode,
        "listen/endpoints": list(config.listen),
        "connect/endpoints": list(config.connect),
        # No multicast or gossip discovery: a session reaches exactly the endpoints it names.
        "scouting/multicast/enabled": False,
        "scouting/gossip/enabled": False,
        "transport/shared_memory/enabled": config.shared_memory,
    }
    if config.tls.enabled:
        settings.update(tls_settings(config.tls))
    zconfig = zenoh.Config()
    for key, value in settings.items():
        zconfig.insert_json5(key, json.dumps(value))
    if config.access_control:
        _insert_access_control(zconfig, Path(config.access_control))
    return zconfig


def tls_settings(tls: TlsConfig) -> dict[str, object]:
    """Mutual TLS: the same certificate whether this session listens or connects, the peer's signed by the CA,
    the server's name checked against the endpoint, and no link of any other protocol."""
    for key in ("root_ca", "certificate", "private_key"):
        path = getattr(tls, key)
        if not Path(path).is_file():
            raise RuntimeError(f"tls.{key}={path!r}: no such file (`sop keys` writes the fleet's certificates)")
    try:
        check_certificate(Path(tls.root_ca), Path(tls.certificate), Path(tls.private_key))
    except ValueError as err:
        raise RuntimeError(f"tls: {err}") from None
    return {
        f"{_TLS}/root_ca_certificate": tls.root_ca,
        f"{_TLS}/listen_certificate": tls.certificate,
        f"{_TLS}/listen_private_key": tls.private_key,
        f"{_TLS}/connect_certificate": tls.certificate,
        f"{_TLS}/connect_private_key": tls.private_key,
        f"{_TLS}/enable_mtls": True,
        f"{_TLS}/verify_name_on_connect": True,
        "transport/link/protocols": ["tls"],
    }


def _insert_access_control(zconfig: zenoh.Config, path: Path) -> None:
    try:
        text = path.read_text()
    except OSError as err:
        raise RuntimeError(f"access_control={str(path)!r}: cannot read: {err.strerror}") from None
    try:
        zconfig.insert_json5("access_control", text)
    except zenoh.ZError as err:
        raise RuntimeError(f"access_control={str(path)!r}: not a Zenoh access_control section (enabled, "
                           f"default_permission, rules, subjects, policies): {err}") from None  # fmt: skip
    if json.loads(zconfig.get_json("access_control")).get("enabled") is not True:
        raise RuntimeError(f"access_control={str(path)!r}: `enabled` is not true, so nothing would be checked "
                           "(leave access_control empty to run without)")  # fmt: skip


def open_session(config: ZenohConfig) -> zenoh.Session:
    """Open a session; raises RuntimeError naming the endpoints (and files) when Zenoh refuses (e.g. a port in
    use, a certificate it cannot use)."""
    zconfig = session_config(config)
    tls = config.tls
    files = [f"{key}={path!r}" for key, path in (("tls.root_ca", tls.root_ca), ("tls.certificate", tls.certificate),
             ("tls.private_key", tls.private_key), ("access_control", config.access_control)) if path]  # fmt: skip
    try:
        return zenoh.open(zconfig)
    except zenoh.ZError as err:
        using = f"; {', '.join(files)}" if files else ""
        raise RuntimeError(f"cannot open a Zenoh session (listen {list(config.listen)}, connect "
                           f"{list(config.connect)}{using}): {err}") from None  # fmt: skip


class QueryWorkers:
    """Queries answered by `serve` on `workers` threads of this process, not in Zenoh's callback, which only hands
    them over (`submit`): work that touches the disk would otherwise hold up the session's other traffic.
    Queries on one key go to one worker, in the order they came (an upload's pieces are written in order). A
    query that fails is logged and answered by nobody (its peer's query times out); the worker goes on."""

    def __init__(self, name: str, workers: int, serve: Callable[[zenoh.Query], None]) -> None:
        self._serve, self._log = serve, logging.getLogger(f"sop.{name}")
        self._queues: list[queue.Queue] = [queue.Queue() for _ in range(workers)]
        self._threads = [threading.Thread(target=self._work, args=(q,), name=f"{name}-{i}", daemon=True)
                         for i, q in enumerate(self._queues)]  # fmt: skip
        for thread in self._threads:
            thread.start()

    def submit(self, query: zenoh.Query) -> None:
        key = str(query.key_expr)
        self._queues[zlib.crc32(key.encode()) % len(self._queues)].put(query)

    def _work(self, pending: queue.Queue) -> None:
        while (query := pending.get()) is not None:
            try:
                self._serve(query)
            except Exception:  # one bad query must not stop the worker that serves other robots
                self._log.exception("a query on %s failed", query.key_expr)
            finally:
                query.drop()  # the query is answered once it is dropped

    def close(self) -> None:
        """Serve what was handed over, then stop (undeclare the queryable first)."""
        for q in self._queues:
            q.put(None)
        for thread in self._threads:
            thread.join(timeout=10.0)
