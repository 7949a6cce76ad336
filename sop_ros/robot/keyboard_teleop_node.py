"""Keyboard teleop in a terminal: an operator device for robots that use Cartesian delta actions.

Run it in its own terminal beside a robot (`ros2 run sop_ros keyboard_teleop --ros-args -r __ns:=/robot_0`).
It sends operator commands only while engaged (space), which the teleop arbiter treats as a takeover, and
labels episodes through the arbiter's label service.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import threading
import tty

from rclpy.node import Node
from std_msgs.msg import Float64MultiArray

from sop_ros.robot import topics
from sop_ros.robot.spin import run_node
from sop_ros.robot.teleop_devices import KEYBOARD_HELP, KeyboardTeleop
from sop_ros.srv import LabelEpisode


class KeyboardTeleopNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("keyboard_teleop", **kwargs)
        self.declare_parameter("rate_hz", 30.0)
        self.declare_parameter("speed", 0.5)
        self.keyboard = KeyboardTeleop(speed=self.get_parameter("speed").value)
        self.finished = threading.Event()
        self.command_pub = self.create_publisher(Float64MultiArray, topics.OPERATOR_COMMAND, topics.STREAM)
        self.label_client = self.create_client(LabelEpisode, topics.LABEL_EPISODE)
        self.create_timer(1.0 / self.get_parameter("rate_hz").value, self.on_tick)
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self.read_keys, name="keyboard", daemon=True)
        self._reader.start()

    def read_keys(self) -> None:
        """Raw terminal input on its own thread (a blocking read must not stall the executor)."""
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd) if os.isatty(fd) else None
        try:
            if saved is not None:
                tty.setcbreak(fd)
            print(KEYBOARD_HELP, end="\r\n", flush=True)  # after cbreak: once it shows, keys count one by one
            while not self.finished.is_set():
                if not select.select([fd], [], [], 0.1)[0]:
                    continue
                data = os.read(fd, 32).decode(errors="ignore")
                if not data:  # end of input
                    break
                for key in data:
                    self.on_key(key.lower())
        finally:
            if saved is not None:
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            self.finished.set()

    def on_key(self, key: str) -> None:
        with self._lock:
            was_engaged = self.keyboard.engaged
            label = self.keyboard.press(key)
        if self.keyboard.engaged != was_engaged:
            print("operator in control" if self.keyboard.engaged else "released", end="\r\n", flush=True)
        if label is not None and self.label_client.service_is_ready():
            self.label_client.call_async(LabelEpisode.Request(outcome=label, note="keyboard"))
        if self.keyboard.quit:
            self.finished.set()

    def on_tick(self) -> None:
        with self._lock:
            command = self.keyboard.command()
        if command is not None:
            self.command_pub.publish(Float64MultiArray(data=command.tolist()))


def main(args: list[str] | None = None) -> int:
    return run_node(KeyboardTeleopNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
