"""What an episode file holds, as data: its metadata records, outcomes, the topics its messages come on, who was
in control, and the names of the files and directories a recording root holds. Plain Python: the recorder,
the uploader, the cloud's store and the learner's dataset all read it here.
"""

from __future__ import annotations

import re
from enum import IntEnum, StrEnum

# Metadata record names. The recorder writes its start metadata first, so that a crash does not lose it; the
# "episode" record is written when the episode finishes and holds everything known about it (the start
# metadata updated with the outcome, interventions, ...). A reader takes the finished record, else the start.
START_METADATA = "episode_start"
EPISODE_METADATA = "episode"

# Under a recording root: finished episodes are <root>/<episode_id>.mcap; the episode being recorded (or one
# a crash interrupted) is in PARTIAL_DIR; partials nothing could be read from are moved to QUARANTINE_DIR.
PARTIAL_DIR = ".partial"
QUARANTINE_DIR = "quarantine"
SKIPPED_DIRS = (PARTIAL_DIR, QUARANTINE_DIR)  # directories that hold no finished episode

# Topics an episode records, relative to the robot's namespace (every robot runs under /<robot_id>).
JOINT_STATES = "joint_states"  # sensor_msgs/msg/JointState: one per control step, the step's observation
CAMERA_IMAGE = "cameras/{camera}/image_raw"  # sensor_msgs/msg/Image
CAMERA_COMPRESSED = "cameras/{camera}/image_raw/compressed"  # sensor_msgs/msg/CompressedImage (JPEG)
ROBOT_COMMAND = "command"  # std_msgs/msg/Float64MultiArray: the command the robot executed
# sensor_msgs/msg/JointState (names: the action names): the command the robot applied from the joint state of the
# same stamp, from a robot that can say (the simulator does). With it each step's action is known exactly; without
# it the dataset matches the headerless commands above to steps by their arrival times.
EXECUTED_COMMAND = "command/executed"
INTERVENTION_STATE = "teleop/intervention"  # sop_ros/msg/InterventionState: who was in control
POLICY_CHUNK = "policy/chunk"  # sop_ros/msg/ActionChunk: the policy's chunks, with the weights' version

JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
COMMAND_TYPE = "std_msgs/msg/Float64MultiArray"


class Outcome(StrEnum):
    """An episode's outcome as its metadata spells it."""

    SUCCESS = "success"
    FAILURE = "failure"
    ABORT = "abort"  # stopped before its end (the robot shut down, a disk error): not a failure of the policy
    UNKNOWN = "unknown"  # nobody said: a recovered crash, or an episode never labelled

    @classmethod
    def from_event(cls, code: int) -> Outcome:
        """The outcome of an EpisodeEvent's `outcome` field (its OUTCOME_*); an unknown code reads as UNKNOWN."""
        return _EVENT_OUTCOMES.get(code, cls.UNKNOWN)

    @classmethod
    def of(cls, text: str) -> Outcome:
        """The outcome a metadata value names; anything else reads as UNKNOWN."""
        return cls(text) if text in cls._value2member_map_ else cls.UNKNOWN


# sop_ros/msg/EpisodeEvent OUTCOME_*
_EVENT_OUTCOMES = {0: Outcome.UNKNOWN, 1: Outcome.SUCCESS, 2: Outcome.FAILURE, 3: Outcome.ABORT}

LABELLED = (Outcome.SUCCESS, Outcome.FAILURE)  # an episode that says how the task went


class Controller(IntEnum):
    """Who commands the robot; the values are sop_ros/msg/InterventionState CONTROLLER_*."""

    POLICY = 0
    OPERATOR = 1  # an operator took over: an intervention
    HOLD = 2  # nobody: inputs are stale or missing, the robot is held still


_EPISODE_ID = re.compile(r"[A-Za-z0-9._-]+")  # fullmatch: "$" would let a trailing newline through


def validate_episode_id(episode_id: str) -> str:
    """The id names files, so only [A-Za-z0-9._-] and never '.' or '..'; ValueError otherwise."""
    if not is_episode_id(episode_id):
        raise ValueError(
            f"episode id {episode_id!r} is not allowed: use only letters, digits, '.', '_' and '-' "
            "(e.g. 'robot_0-20261103T101500Z-3')"
        )
    return episode_id


def is_episode_id(name: object) -> bool:
    return isinstance(name, str) and _EPISODE_ID.fullmatch(name) is not None and name not in (".", "..")
