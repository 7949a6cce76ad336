"""The cloud's end of the bridge as a process: episode ingest and policy serving on one Zenoh session
(`sop cloud`, `sop ingest`), and the operator's view of the fleet (`sop fleet status`)."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from dataclasses import replace

from sop_ros.bridge.protocol import FLEET_TABLE
from sop_ros.bridge.zenoh_session import open_session
from sop_ros.cloud.episode_ingest import EpisodeIngestService
from sop_ros.cloud.episode_store import EpisodeStore
from sop_ros.cloud.policy_server import PolicyServer
from sop_ros.configs.bridge import ZenohConfig
from sop_ros.configs.learner import LearnerConfig


def cloud_zenoh(config: LearnerConfig) -> ZenohConfig:
    """The cloud's one session: robots connect to its listen endpoints."""
    return config.ingest.zenoh


class CloudServices:
    """The robots' counterpart on one Zenoh session: episode ingest into the store, and (optionally) policy
    serving from the registry. `sop cloud` runs it alone; `sop learner` runs it beside training."""

    def __init__(self, config: LearnerConfig, serve_policies: bool) -> None:
        self.zenoh = cloud_zenoh(config)
        self.session = open_session(self.zenoh)  # RuntimeError when it cannot open (e.g. the port is taken)
        self.store = EpisodeStore(config.store_dir)
        self.ingest = EpisodeIngestService(self.store, config.ingest, self.session)
        self.policy_server = PolicyServer(self.session, config.policies) if serve_policies else None

    @property
    def endpoints(self) -> list[str]:
        return list(self.zenoh.listen) or list(self.zenoh.connect)

    def close(self) -> None:
        if self.policy_server:
            self.policy_server.close()
        self.ingest.close()
        self.session.close()
        self.store.close()


def run_cloud(config: LearnerConfig, duration_s: float | None, serve_policies: bool, name: str) -> int:
    """Serve until SIGINT / SIGTERM or `duration_s`; 1 when the session cannot open (e.g. the port is taken)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        cloud = CloudServices(config, serve_policies)
    except RuntimeError as err:
        print(f"sop {name}: {err}", file=sys.stderr)
        return 1
    if cloud.policy_server:
        latest = cloud.policy_server.latest
        print(f"sop {name}: serving policies from {config.policies.registry_dir} (latest: "
              f"{latest.version if latest else 'none yet'})")  # fmt: skip
    print(f"sop {name}: {cloud.store.count()} episodes in {config.store_dir}; listening on {cloud.endpoints}",
          flush=True)  # fmt: skip
    stop.wait(duration_s)
    count = cloud.store.count()
    cloud.close()
    print(f"sop {name}: stopped; {count} episodes in {config.store_dir}")
    return 0


def fetch_fleet_table(config: LearnerConfig, timeout_s: float = 5.0) -> dict:
    """Ask the cloud (at the config's listen endpoints) for its fleet table; RuntimeError when it does not answer."""
    cloud = cloud_zenoh(config)
    zconfig = replace(cloud, listen=(), connect=cloud.listen or cloud.connect)
    with open_session(zconfig) as session:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # the session connects in the background: ask until it answers
            for answer in session.get(FLEET_TABLE, timeout=min(1.0, timeout_s)):
                if answer.ok is not None:
                    return json.loads(answer.ok.payload.to_bytes())
            time.sleep(0.1)
    raise RuntimeError(f"no answer on {FLEET_TABLE} from {list(zconfig.connect)} within {timeout_s:g} s "
                       "(is `sop cloud` running there?)")  # fmt: skip


def format_fleet_table(table: dict) -> str:
    """One line per robot: what it runs against the latest version, its outbox, and how fresh its news are."""
    latest = table["latest_version"] or "none"
    header = ("robot", "running", "pending", "held", "state", "outbox", "MiB", "uploaded", "last upload",
              "report age", "problem")  # fmt: skip
    rows = [header]
    canary = table.get("canary") or {}
    for r in table["robots"]:
        expected = canary["version"] if r["robot"] in canary.get("robots", ()) else table["latest_version"]
        behind = r["running_version"] != expected
        since = r["seconds_since_upload"]
        rows.append((
            r["robot"], (r["running_version"] or "none") + (" (behind)" if behind else ""), r["pending_version"] or "-",
            r["held_version"] or "-", r["policy_state"], str(r["outbox_episodes"]),
            f"{r['outbox_bytes'] / 2**20:.1f}", str(r["uploaded"]), f"{since:.0f} s ago" if since >= 0 else "never",
            f"{r['report_age_s']:.1f} s", r["last_error"][:60] or "-",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    rollout = ""
    if canary:
        rollout += f"; {canary['version']} on canary with {', '.join(canary['robots'])}"
    for verdict in table.get("rollouts", [])[-3:]:
        rollout += f"\n  {verdict['candidate']}: {verdict['decision']} ({verdict['reason']})"
    return f"latest policy: {latest}; {len(table['robots'])} robots reporting{rollout}\n" + "\n".join(lines)
