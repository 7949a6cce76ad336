"""A fix for Fast DDS 2.x (ROS 2 Jazzy's default middleware) that lets nodes stop: load it before rclpy.

Deleting a node's DDS participant, rmw_fastrtps first waits in DomainParticipant::set_listener until no discovery
callback runs. That wait never blocks (its deadline overflows: see src/fastdds_set_listener.cpp): the deleting
thread re-takes the participant's callback mutex in a tight loop, and a receive thread inside a discovery callback
starves on it. It happens when another node leaves at the same moment, as a whole robot's nodes do on Ctrl-C;
under CPU load it held nodes for 10 s and more (gdb: the main thread in set_listener -> system_clock::now, a
dds.udp thread in MyRTPSParticipantListener::onWriterDiscovery -> pthread_mutex_lock).

The colcon build makes libsop_ros_fastdds_fix.so, which defines that one set_listener overload with a deadline
that can be waited for. Loaded into the global symbol scope before rclpy loads Fast DDS, its definition is the one
the dynamic linker binds for rmw_fastrtps and for Fast DDS's own calls. Where it was not built (no ROS, another
middleware, Fast DDS 3) nothing is loaded.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

LIBRARY = "libsop_ros_fastdds_fix.so"


def library_path() -> Path | None:
    """The built library in the first prefix of AMENT_PREFIX_PATH (a sourced workspace) that has it."""
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        path = Path(prefix) / "lib" / LIBRARY
        if path.is_file():
            return path
    return None


def load() -> Path | None:
    """Load the fix into this process (again: a no-op); its path, or None where it was not built."""
    path = library_path()
    if path is not None:
        ctypes.CDLL(str(path), mode=os.RTLD_GLOBAL)
    return path
