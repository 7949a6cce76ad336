"""The robot's bridge to the cloud: the recorder's finished episodes go up over Zenoh (sop_ros.bridge.uploader),
each removed from the outbox only once the cloud stored it; its health goes out on bridge/status."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from rclpy.clock import Clock, ClockType
from rclpy.node import Node

from sop_ros.bridge.uploader import OutboxUploader
from sop_ros.bridge.zenoh_session import open_session
from sop_ros.configs.bridge import BridgeConfig
from sop_ros.msg import BridgeStatus
from sop_ros.robot import topics
from sop_ros.robot.params import declare_config
from sop_ros.robot.spin import log_at, run_node


def status_message(uploader: OutboxUploader, now: float) -> BridgeStatus:
    stats, files = uploader.snapshot(), uploader.pending()
    return BridgeStatus(
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


class BridgeNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("bridge", **kwargs)
        self.config = cfg = declare_config(self, BridgeConfig)
        self.robot_id = topics.robot_id(self.get_namespace())
        self.session = open_session(cfg.zenoh)
        outbox = Path(cfg.outbox_dir) / self.robot_id
        self.uploader = OutboxUploader(self.session, self.robot_id, outbox, cfg, self.log)
        self.status_pub = self.create_publisher(BridgeStatus, topics.BRIDGE_STATUS, topics.STREAM)
        # Wall time: the bridge reports while a simulator's clock stands still.
        self.create_timer(1.0 / cfg.status_hz, self.publish_status, clock=Clock(clock_type=ClockType.STEADY_TIME))
        # Zenoh calls block (a reply may take reply_timeout_s): uploads run on a thread of their own.
        self._stop = threading.Event()
        self._uploads = threading.Thread(target=self.uploader.run, args=(self._stop,), name="uploads", daemon=True)
        self._uploads.start()
        self.get_logger().info(f"uploading {outbox} to {list(cfg.zenoh.connect) or list(cfg.zenoh.listen)}")

    def log(self, severity: str, message: str) -> None:
        log_at(self, severity, message, warn_throttle_s=5.0)  # a cloud away for hours: one warning per 5 s

    def publish_status(self) -> None:
        msg = status_message(self.uploader, time.time())
        msg.header.stamp = self.get_clock().now().to_msg()
        self.status_pub.publish(msg)

    def destroy_node(self) -> None:
        self._stop.set()
        self._uploads.join(timeout=self.config.reply_timeout_s + 5.0)
        self.session.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node(BridgeNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
