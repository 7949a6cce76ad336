"""The robot's bridge to the cloud, over one Zenoh session:

- up: the recorder's finished episodes (sop_ros.bridge.uploader), each removed from the outbox only once the
  cloud stored it;
- down: signed policies (sop_ros.bridge.policy_fetcher), verified, then handed to the policy node on policy/load;
- its health on bridge/status, and the robot's report (versions, outbox) to the cloud's fleet table.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from rclpy.clock import Clock, ClockType
from rclpy.node import Node

from sop_ros.bridge.artifacts import PolicyAnnouncement, load_public_key
from sop_ros.bridge.certificates import certificate_common_name
from sop_ros.bridge.policy_fetcher import PolicyFetcher
from sop_ros.bridge.protocol import MAX_REPORT_TEXT, robot_report_key
from sop_ros.bridge.uploader import OutboxUploader
from sop_ros.bridge.zenoh_session import open_session
from sop_ros.configs import ConfigError
from sop_ros.configs.bridge import BridgeConfig
from sop_ros.msg import BridgeStatus, PolicyStatus
from sop_ros.robot import topics
from sop_ros.robot.hot_swap import policy_state_name
from sop_ros.robot.params import declare_config
from sop_ros.robot.spin import log_at, run_node
from sop_ros.srv import LoadPolicy

LOAD_TIMEOUT_S = 300.0  # loading and warming a large model (a TensorRT engine build) takes minutes
SERVICE_WAIT_S = 5.0  # for the policy node's load service to be there
POLL_S = 0.05  # waits on the fetcher's thread look this often whether the node stops
STOP_JOIN_S = 0.5  # a stop waits this long for the upload and download threads, before and after closing Zenoh


def status_message(uploader: OutboxUploader, fetcher: PolicyFetcher | None, now: float) -> BridgeStatus:
    stats, files = uploader.snapshot(), uploader.pending()
    msg = BridgeStatus(
        cloud_reachable=stats.reachable,
        outbox_episodes=len(files),
        outbox_bytes=uploader.outbox_bytes(files),
        uploaded=stats.uploaded,
        duplicates=stats.duplicates,
        refused=stats.refused,
        dropped=stats.dropped,
        bytes_sent=stats.bytes_sent,
        seconds_since_upload=now - stats.last_upload_time if stats.last_upload_time else -1.0,
        last_error=stats.last_error,
    )
    if fetcher is not None:
        policies = fetcher.snapshot()
        msg.policy_newest, msg.policy_held, msg.policies_refused = policies.newest, policies.held, policies.refused
        msg.policy_error = policies.last_error
    return msg


def robot_report(status: BridgeStatus, policy: PolicyStatus | None) -> dict:
    """What the cloud's fleet table shows for this robot (`sop fleet status`)."""
    return {
        "running_version": policy.version if policy else "",
        "pending_version": policy.pending_version if policy else "",
        "backend": policy.backend if policy else "",
        "policy_state": policy_state_name(policy.state) if policy else "no status",
        "newest_version": status.policy_newest,
        "held_version": status.policy_held,
        "outbox_episodes": status.outbox_episodes,
        "outbox_bytes": status.outbox_bytes,
        "uploaded": status.uploaded,
        "seconds_since_upload": round(status.seconds_since_upload, 3),
        "last_error": (status.last_error or status.policy_error)[:MAX_REPORT_TEXT],
        "time": time.time(),
    }


class BridgeNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("bridge", **kwargs)
        self.config = cfg = declare_config(self, BridgeConfig)
        self.robot_id = topics.robot_id(self.get_namespace())
        if cfg.zenoh.tls.enabled:  # the cloud knows a robot by its certificate: another name is silently denied
            name = certificate_common_name(Path(cfg.zenoh.tls.certificate))
            if name != self.robot_id:
                raise ConfigError(f"zenoh.tls.certificate={cfg.zenoh.tls.certificate!r}: certifies {name!r}, this "
                                  f"robot is {self.robot_id!r}")  # fmt: skip
        self.session = open_session(cfg.zenoh)
        outbox = Path(cfg.outbox_dir) / self.robot_id
        self.uploader = OutboxUploader(self.session, self.robot_id, outbox, cfg, self.log)
        self.policy_status: PolicyStatus | None = None
        self.fetcher = self.make_fetcher(cfg)
        self.load_client = self.create_client(LoadPolicy, topics.LOAD_POLICY)
        self.create_subscription(PolicyStatus, topics.POLICY_STATUS, self.on_policy_status, topics.LATEST)
        self.status_pub = self.create_publisher(BridgeStatus, topics.BRIDGE_STATUS, topics.STREAM)
        # Wall time: the bridge reports while a simulator's clock stands still.
        self.create_timer(1.0 / cfg.status_hz, self.publish_status, clock=Clock(clock_type=ClockType.STEADY_TIME))
        # Zenoh calls block (a reply may take reply_timeout_s): uploads and downloads run on threads of their own.
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self.uploader.run, args=(self._stop,), name="uploads", daemon=True)]
        if self.fetcher is not None:
            self._threads.append(threading.Thread(target=self.fetcher.run, args=(self._stop,), name="policies",
                                                  daemon=True))  # fmt: skip
        for thread in self._threads:
            thread.start()
        self.get_logger().info(f"uploading {outbox} to {list(cfg.zenoh.connect) or list(cfg.zenoh.listen)}")

    def make_fetcher(self, cfg: BridgeConfig) -> PolicyFetcher | None:
        if not cfg.policies.public_key:
            self.get_logger().warning(
                "policies.public_key is empty: no policy will be downloaded (only policies signed by the fleet's "
                "key are ever loaded; make the key pair with `sop keys`)"
            )
            return None
        try:
            public_key = load_public_key(cfg.policies.public_key)
        except ValueError as err:
            raise ConfigError(f"policies.public_key={cfg.policies.public_key!r}: {err}") from None
        cache = Path(cfg.policies.cache_dir) / self.robot_id
        return PolicyFetcher(self.session, cache, public_key, cfg.policies,
                             self.request_load, self.policy_versions, self.log, cfg.reply_timeout_s,
                             robot_id=self.robot_id)  # fmt: skip

    def log(self, severity: str, message: str) -> None:
        log_at(self, severity, message, warn_throttle_s=5.0)  # a cloud away for hours: one warning per 5 s

    def on_policy_status(self, msg: PolicyStatus) -> None:
        self.policy_status = msg
        if msg.awaited_version and self.fetcher is not None:
            self.fetcher.want(msg.awaited_version)

    def policy_versions(self) -> tuple[str, str]:
        status = self.policy_status
        return (status.version, status.pending_version) if status else ("", "")

    def request_load(self, path: Path, announcement: PolicyAnnouncement) -> str | None:
        """Called on the fetcher's thread: ask policy/load and wait (the executor completes the future).

        TimeoutError when the service is not there or does not answer, or when this node stops meanwhile (the policy
        node may stop first and never answer): the fetcher asks again later, or at the next start.
        """
        immediate = self.config.policies.swap == "immediate"
        request = LoadPolicy.Request(path=str(path.resolve()), version=announcement.version,
                                     sha256=announcement.sha256, immediate=immediate,
                                     rollout_stage=announcement.stage)  # fmt: skip
        self.wait_unless_stopped(self.load_client.service_is_ready, SERVICE_WAIT_S,
                                 f"no {self.load_client.srv_name} service (is the policy node running?)")  # fmt: skip
        future = self.load_client.call_async(request)
        self.wait_unless_stopped(future.done, LOAD_TIMEOUT_S, f"policy node did not answer within {LOAD_TIMEOUT_S:g} s")
        response = future.result()
        return None if response.accepted else response.message

    def wait_unless_stopped(self, condition, timeout_s: float, timeout_message: str) -> None:
        """Wait until `condition()`; TimeoutError after `timeout_s` or as soon as this node stops."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if self._stop.wait(POLL_S):
                raise TimeoutError("the bridge is stopping")
            if time.monotonic() > deadline:
                raise TimeoutError(timeout_message)

    def publish_status(self) -> None:
        msg = status_message(self.uploader, self.fetcher, time.time())
        msg.header.stamp = self.get_clock().now().to_msg()
        self.status_pub.publish(msg)
        report = robot_report(msg, self.policy_status)
        self.session.put(robot_report_key(self.robot_id), json.dumps(report).encode())

    def destroy_node(self) -> None:
        self._stop.set()  # uploads and downloads end at their next wait...
        if self.fetcher is not None:
            self.fetcher.wake()  # (the wait for announcements is on a queue)
        for thread in self._threads:
            thread.join(timeout=STOP_JOIN_S)
        # ...but one may be waiting for the cloud's reply (up to reply_timeout_s): closing the session ends every
        # pending query at once. (An upload cut short is resumed at the next start: the cloud keeps its pieces.)
        self.session.close()
        for thread in self._threads:
            thread.join(timeout=STOP_JOIN_S)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node(BridgeNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
