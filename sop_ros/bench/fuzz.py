"""`sop chaos fuzz`: machine-made bad inputs at the boundaries that parse what comes from outside, in process.

Each boundary gets `inputs` generated inputs (hypothesis, derandomized: the same inputs every run) between
legitimate ones. An input is either refused with the boundary's own error type and a reason, or accepted and then
held to the boundary's promises; anything else (another exception, an accepted input that breaks a promise) is a
crash, kept with its input. After every generated input a legitimate one must still be served as before.

    teleop_commands   the arbiter (Arbiter.submit/tick, the teleop node's logic): commands of any length, NaN,
                      inf, huge values, from the policy or the operator; no output leaves the configured limits or
                      moves faster than the rate limit, and a legitimate policy command is still followed
    upload_pieces     episode upload keys and piece headers (bridge/protocol.py): anything but ProtocolError on a
                      malformed one, or a bad one accepted, is a crash
    announcements     signed policy announcements, each field mutated or the JSON mangled: decoding refuses the
                      malformed, verification refuses every changed one (a tampered announcement accepted is a
                      crash); the untouched one still verifies
    config_yaml       the shipped YAMLs with one key's value replaced or a key renamed: ConfigError or accepted
    episode_files     a recorded episode truncated or with bytes changed: index_episode refuses it with
                      ValueError or indexes it; the intact file still indexes the same
    robot_reports     a robot's report on sop/fleet/robots/<id> (protocol.decode_robot_report), a field changed,
                      missing or the bytes mangled: refused, or kept and shown by the fleet table, `sop fleet
                      status` and the learner's version lag without an error
    range_queries     policy download queries (cloud ArtifactFiles.read): any version name, any header; only the
                      published version's own bytes are ever answered
    joint_states      a JointState's names and positions as the ingest node reads them (sync.joint_positions):
                      any names, lengths, NaN, inf, float32 overflow; accepted ones are finite and complete
    images            camera messages as the ingest node decodes them (preprocess.camera_frame): damaged JPEGs,
                      random bytes, raw images of any encoding and size; accepted ones are the policy's frame
    load_requests     policy/load requests as the policy node loads them (model.policy.load_policy): missing,
                      odd and NUL-byte paths, truncated or changed ONNX files (a changed one with its sha256 given
                      must be refused), another action space; the intact file still loads
    label_requests    LabelEpisode requests as the teleop arbiter resolves them (arbitration.label_target): any
                      outcome code and episode id; only a label of a known episode is taken

What it does not cover: the bytes of ROS messages and Zenoh samples between processes (the middleware parses
those; the boundaries above are what our code makes of them), bursts, and replays of another robot's uploads
(the access control of sop_ros.bridge.security refuses those in `sop chaos bridge` and test_bridge_security).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from sop_ros.host import machine

BOUNDARIES = ("teleop_commands", "upload_pieces", "announcements", "config_yaml", "episode_files", "robot_reports",
              "range_queries", "joint_states", "images", "load_requests", "label_requests")
CONFIG = Path(__file__).resolve().parents[2] / "config"  # the shipped YAMLs


@dataclass
class Tally:
    inputs: int = 0
    refused: int = 0
    accepted: int = 0
    crashes: int = 0
    legit_served: int = 0
    legit_failed: int = 0
    crash_examples: list[str] = field(default_factory=list)  # the first few, with their inputs

    @contextmanager
    def judging(self, what: str, refusals: tuple[type[Exception], ...]) -> Iterator[None]:
        """One generated input through the boundary in the block: refused when it raises one of `refusals`,
        accepted when it ends (a broken promise inside is reported with `crash`), a crash on any other error."""
        self.inputs += 1
        try:
            yield
            self.accepted += 1
        except refusals:
            self.refused += 1
        except Exception as err:  # noqa: BLE001 - a crash is recorded, not raised
            self.crash(f"{what}: {type(err).__name__}: {err}")

    def crash(self, what: str) -> None:
        self.crashes += 1
        if len(self.crash_examples) < 5:
            self.crash_examples.append(what[:400])

    def serve(self, legitimate: Callable[[], bool]) -> None:
        """A legitimate input after a generated one: served when `legitimate` returns True without raising."""
        try:
            served = bool(legitimate())
        except Exception:  # noqa: BLE001 - counted as not served
            served = False
        self.legit_served += served
        self.legit_failed += not served

    def report(self) -> dict:
        return asdict(self)


def generate(strategy, check: Callable[[object], None], inputs: int) -> None:
    """Call `check` on `inputs` values drawn from `strategy` (fewer if the strategy has fewer distinct ones)."""
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=inputs, database=None, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=("generate",))  # fmt: skip
    @given(strategy)
    def run(value) -> None:
        check(value)

    run()


# ---------------------------------------------------------------------------------------------------------
# The boundaries
# ---------------------------------------------------------------------------------------------------------


def fuzz_teleop_commands(inputs: int) -> Tally:
    from hypothesis import strategies as st

    from sop_ros.configs import load_config
    from sop_ros.configs.robot import RobotLaunchConfig
    from sop_ros.episodes.format import Controller
    from sop_ros.robot.arbitration import Arbiter

    config = load_config(RobotLaunchConfig, CONFIG / "fleet_sim.yaml").nodes.teleop_arbiter
    low, high, rate = np.array(config.action_min), np.array(config.action_max), np.array(config.max_rate)
    arbiter, tally, now = Arbiter(config), Tally(), [0.0]
    last_tick = [0.0]
    legit = np.array([0.3, -0.2, 0.1, 0.5])[: len(config.action_names)]
    values = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e308, -1e308, 2.0, -2.0, 0.0])
    commands = st.tuples(st.sampled_from([Controller.POLICY, Controller.OPERATOR]),
                         st.lists(values, min_size=0, max_size=8))  # fmt: skip
    previous = [np.zeros(len(config.action_names))]

    def held_to_limits(out: np.ndarray, what: str) -> bool:
        """The output is inside the limits and moved at most max_rate times the time since the last tick (at
        least a control period, as the arbiter counts it)."""
        dt = max(now[0] - last_tick[0], 1.0 / config.control_hz)
        last_tick[0] = now[0]
        if not (np.all(np.isfinite(out)) and np.all(out >= low - 1e-9) and np.all(out <= high + 1e-9)):
            tally.crash(f"{what}: output {out.tolist()} outside the limits")
            return False
        if np.any(np.abs(out - previous[0]) > rate * dt + 1e-9):
            tally.crash(f"{what}: output {out.tolist()} moved faster than the rate limit from {previous[0].tolist()}")
            return False
        previous[0] = out
        return True

    def check(value) -> None:
        source, command = value
        now[0] += 1.0 / config.control_hz
        with tally.judging(f"{source.name} {command}", (ValueError,)):
            arbiter.submit(source, np.array(command, dtype=np.float64), now[0])
        held_to_limits(arbiter.tick(now[0]).command, f"{source.name} {command}")
        tally.serve(follows_the_policy)

    def follows_the_policy() -> bool:
        """A legitimate policy command, with the operator's input gone stale: the arbiter follows it."""
        now[0] += config.operator_timeout_s + 1.0 / config.control_hz
        arbiter.submit(Controller.POLICY, legit, now[0])
        out = arbiter.tick(now[0])
        return out.controller == Controller.POLICY and held_to_limits(out.command, "the legitimate command")

    generate(commands, check, inputs)
    return tally


def json_values():
    from hypothesis import strategies as st

    scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80)
               | st.sampled_from(["0" * 64, "f" * 64, "A" * 64, "../../etc", "robot_1", ""]))  # fmt: skip
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10),
                        inner, max_size=4), max_leaves=8)  # fmt: skip


def fuzz_upload_pieces(inputs: int) -> Tally:
    from hypothesis import strategies as st

    from sop_ros.bridge.protocol import ArtifactRange, Piece, ProtocolError, episode_key, parse_episode_key

    tally = Tally()
    good_key, good_piece = episode_key("robot_0", "robot_0-20261205T000000-00001"), Piece(10, "a" * 64, 0).encode()
    headers = st.binary(max_size=200) | st.builds(lambda v: json.dumps(v).encode(), json_values()) | st.builds(
        lambda size, sha, offset: json.dumps({"size": size, "sha256": sha, "offset": offset}).encode(),
        json_values(), json_values(), json_values())  # fmt: skip
    keys = st.text(max_size=120) | st.builds(lambda a, b: f"sop/episodes/{a}/{b}", st.text(max_size=30),
                                             st.text(max_size=60))  # fmt: skip

    def check(value) -> None:
        kind, data = value
        with tally.judging(f"{kind} {data!r}", (ProtocolError,)):
            if kind == "key":
                robot, episode = parse_episode_key(data)
                if "/" in robot or "/" in episode or episode in (".", "..") or not robot or not episode:
                    tally.crash(f"key {data!r} accepted as ({robot!r}, {episode!r})")
            elif kind == "piece":
                piece = Piece.decode(data)
                if not (isinstance(piece.size, int) and piece.size >= 0 and (piece.offset is None or 0 <= piece.offset
                                                                             <= piece.size)):  # fmt: skip
                    tally.crash(f"piece {data!r} accepted as {piece}")
            else:
                ArtifactRange.decode(data)
        tally.serve(lambda: parse_episode_key(good_key) == ("robot_0", "robot_0-20261205T000000-00001")
                    and Piece.decode(good_piece).size == 10)  # fmt: skip

    strategy = (st.tuples(st.just("key"), keys) | st.tuples(st.just("piece"), headers)
                | st.tuples(st.just("range"), headers))  # fmt: skip
    generate(strategy, check, inputs)
    return tally


def fuzz_announcements(inputs: int) -> Tally:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from hypothesis import strategies as st

    from sop_ros.bridge.artifacts import PolicyAnnouncement, VerificationError, sign, verify
    from sop_ros.bridge.protocol import ProtocolError

    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    public = key.public_key()
    good = sign(PolicyAnnouncement("sop-20261205T000000-0000050", "b" * 64, 123456, 1.7e9, "base-1",
                                   {"push-v3": 0.5}), key)  # fmt: skip
    fields = list(json.loads(good.encode()))
    tally = Tally()

    def check(value) -> None:
        kind, name, replacement, raw = value
        if kind == "field":
            data = json.loads(good.encode())
            data[name] = replacement
            encoded = json.dumps(data).encode()
        elif kind == "extra":
            encoded = json.dumps({**json.loads(good.encode()), name: replacement}).encode()
        else:
            encoded = raw
        with tally.judging(f"{encoded!r}", (ProtocolError, VerificationError)):
            announcement = PolicyAnnouncement.decode(encoded)
            verify(announcement, public)
            if announcement != good:
                tally.crash(f"a changed announcement verified: {encoded!r}")
        tally.serve(lambda: verify(PolicyAnnouncement.decode(good.encode()), public) is None)

    strategy = st.tuples(st.sampled_from(["field", "field", "extra", "raw"]), st.sampled_from(fields),
                         json_values(), st.binary(max_size=300))  # fmt: skip
    generate(strategy, check, inputs)
    return tally


def fuzz_config_yaml(inputs: int) -> Tally:
    from hypothesis import strategies as st

    from sop_ros.configs import ConfigError, from_dict
    from sop_ros.configs.learner import LearnerConfig
    from sop_ros.configs.robot import RobotLaunchConfig

    shipped = [(RobotLaunchConfig, n) for n in ("robot.yaml", "sim.yaml", "fleet_sim.yaml", "sim_policy.yaml")]
    shipped += [(LearnerConfig, n) for n in ("learner.yaml", "experiment_learner.yaml", "demo_learner.yaml",
                                             "fleet_learner.yaml")]  # fmt: skip
    documents = [(cls, name, yaml.safe_load((CONFIG / name).read_text())) for cls, name in shipped]
    tally = Tally()

    def paths(node, prefix=()) -> list[tuple]:
        out = []
        if isinstance(node, dict):
            for k, v in node.items():
                out.append((*prefix, k))
                out += paths(v, (*prefix, k))
        return out

    def check(value) -> None:
        index, which, replacement, rename = value
        cls, path, document = documents[index % len(documents)]
        keys = paths(document)
        where = keys[which % len(keys)]
        data = json.loads(json.dumps(document))  # a deep copy
        parent = data
        for k in where[:-1]:
            parent = parent[k]
        if rename:
            parent[rename] = parent.pop(where[-1])
        else:
            parent[where[-1]] = replacement
        with tally.judging(f"{path}: {'.'.join(map(str, where))} -> {rename or replacement!r}", (ConfigError,)):
            from_dict(cls, data)
        tally.serve(lambda: isinstance(from_dict(cls, document), cls))

    strategy = st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), json_values(),
                         st.sampled_from(["", "", "", "taks", "control_hz ", "x"]))  # fmt: skip
    generate(strategy, check, inputs)
    return tally


def fuzz_episode_files(inputs: int, episodes: Path | None) -> Tally:
    from hypothesis import strategies as st

    from sop_ros.episodes.reader import episode_files
    from sop_ros.learner.dataset import DatasetConfig, index_episode

    tally = Tally()
    files = episode_files(episodes) if episodes else []
    if not files:
        return tally
    source = files[0]
    original = source.read_bytes()
    expected = index_episode(source, DatasetConfig())
    work = Path(tempfile.mkdtemp(prefix="sop-fuzz-"))
    target = work / source.parent.name / source.name  # the recorder's layout: <robot>/<episode>.mcap
    target.parent.mkdir(parents=True)

    def check(value) -> None:
        kind, at, data = value
        at = at % len(original)
        damaged = original[:at] if kind == "truncate" else original[:at] + data + original[at + len(data):]
        target.write_bytes(damaged)
        with tally.judging(f"{kind} at {at} ({len(data)} bytes)", (ValueError,)):
            episode = index_episode(target, DatasetConfig())
            if not (np.all(np.isfinite(episode.proprio)) and np.all(np.isfinite(episode.actions))):
                tally.crash(f"{kind} at {at}: accepted with non-finite joint positions or actions")
        tally.serve(lambda: np.array_equal(index_episode(source, DatasetConfig()).actions, expected.actions))

    try:
        strategy = st.tuples(st.sampled_from(["truncate", "overwrite"]), st.integers(0, 2**31),
                             st.binary(min_size=1, max_size=64))  # fmt: skip
        generate(strategy, check, inputs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tally


def good_robot_report() -> dict:
    """A well-formed report (bridge_node.robot_report's fields), of a robot that has not run or uploaded yet."""
    from sop_ros.bridge import protocol

    return ({name: "" for name in protocol.ROBOT_REPORT_TEXT} | {name: 0 for name in protocol.ROBOT_REPORT_COUNTS}
            | {"seconds_since_upload": -1.0, "time": 1.7e9})  # fmt: skip


def fuzz_robot_reports(inputs: int) -> Tally:
    from hypothesis import strategies as st

    from sop_ros.bridge.protocol import ProtocolError, decode_robot_report
    from sop_ros.cloud.services import format_fleet_table
    from sop_ros.learner.online import version_lag

    good = good_robot_report()
    tally = Tally()

    def shown(report: dict) -> str:
        """What the cloud does with a kept report: the fleet table, `sop fleet status`, the learner's status."""
        table = {"latest_version": "v1", "canary": None, "rollouts": [],
                 "robots": [{**report, "robot": "robot_0", "report_age_s": 0.1}]}  # fmt: skip
        version_lag(table, ["v1"])
        return format_fleet_table(table)

    def check(value) -> None:
        kind, name, replacement, raw = value
        data = dict(good)
        if kind == "field":
            data[name] = replacement
        elif kind == "missing":
            data.pop(name)
        encoded = raw if kind == "raw" else json.dumps(data).encode()
        with tally.judging(f"{encoded!r}", (ProtocolError,)):
            shown(decode_robot_report(encoded))
        tally.serve(lambda: "robot_0" in shown(decode_robot_report(json.dumps(good).encode())))

    strategy = st.tuples(st.sampled_from(["field", "field", "missing", "raw"]), st.sampled_from(sorted(good)),
                         json_values() | st.floats() | st.text(min_size=990, max_size=1100), st.binary(max_size=300))
    generate(strategy, check, inputs)
    return tally


def fuzz_range_queries(inputs: int, policy: Path) -> Tally:
    from hypothesis import strategies as st

    from sop_ros.bridge.artifacts import load_private_key, make_signing_keys
    from sop_ros.bridge.protocol import ArtifactRange, ProtocolError
    from sop_ros.cloud.policy_registry import PolicyRegistry
    from sop_ros.cloud.policy_server import ArtifactFiles

    work = Path(tempfile.mkdtemp(prefix="sop-fuzz-"))
    private, _ = make_signing_keys(work / "keys")
    registry = PolicyRegistry(work / "policies")
    version = registry.publish(policy, load_private_key(private)).version
    artifact = registry.artifact_path(version).read_bytes()
    files = ArtifactFiles(registry, max_range_kb=64)
    tally = Tally()
    headers = st.binary(max_size=200) | st.builds(lambda v: json.dumps(v).encode(), json_values()) | st.builds(
        lambda offset, length: json.dumps({"offset": offset, "length": length}).encode(),
        st.integers(-10, 2 * len(artifact)) | json_values(), st.integers(-10, 70 * 1024) | json_values())
    versions = st.sampled_from([version, version, "latest", f"../{version}", version + ".json", ""]) | st.text(
        max_size=40)  # fmt: skip

    def check(value) -> None:
        asked, header = value
        with tally.judging(f"version {asked!r}, range {header!r}", (ProtocolError, ValueError, OSError)):
            data = files.read(asked, header)
            wanted = ArtifactRange.decode(header)
            if asked != version or data != artifact[wanted.offset : wanted.offset + wanted.length]:
                tally.crash(f"version {asked!r}, range {header!r}: answered {len(data)} bytes")
        tally.serve(lambda: files.read(version, ArtifactRange(100, 1000).encode()) == artifact[100:1100])

    try:
        generate(st.tuples(versions, headers), check, inputs)
    finally:
        files.close()
        shutil.rmtree(work, ignore_errors=True)
    return tally


def fuzz_joint_states(inputs: int) -> Tally:
    from hypothesis import strategies as st

    from sop_ros.robot.sync import joint_positions
    from sop_ros.sim.metaworld_sim import JOINT_NAMES

    tally = Tally()
    names = st.lists(st.sampled_from(JOINT_NAMES) | st.text(max_size=12), max_size=12)
    values = st.floats(-4.0, 4.0) | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e39, -1e39])
    # Half of them a whole joint state (every joint, in any order, maybe one more) with any values.
    whole = st.permutations(JOINT_NAMES).flatmap(lambda order: st.tuples(
        st.just(list(order)) | st.just([*order, "extra_joint"]), st.lists(values, min_size=len(order),
                                                                         max_size=len(order) + 1)))  # fmt: skip
    strategy = st.tuples(st.tuples(names, st.lists(values, max_size=12)) | whole,
                         st.sampled_from([(), JOINT_NAMES])).map(lambda v: (*v[0], v[1]))  # fmt: skip

    def check(value) -> None:
        names, positions, wanted = value
        with tally.judging(f"{names} {positions}", (ValueError,)):
            got_names, got = joint_positions(names, positions, wanted)
            expected = list(wanted) or names
            if got_names != expected or got.shape != (len(expected),) or not np.all(np.isfinite(got)):
                tally.crash(f"{names} {positions} ({list(wanted)}): accepted as {got_names} {got.tolist()}")
        tally.serve(lambda: joint_positions(JOINT_NAMES, [0.1] * len(JOINT_NAMES), JOINT_NAMES)[1].shape
                    == (len(JOINT_NAMES),))  # fmt: skip

    generate(strategy, check, inputs)
    return tally


def fuzz_images(inputs: int) -> Tally:
    from hypothesis import strategies as st

    from sop_ros.model.preprocess import camera_frame, encode_jpeg_rgb

    rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    jpeg = encode_jpeg_rgb(rgb, 90)
    expected = camera_frame(32, jpeg)
    tally = Tally()
    sizes = st.integers(0, 200) | st.sampled_from([2**31 - 1, 2**32 - 1])
    raw = st.tuples(st.sampled_from(["rgb8", "bgr8", "mono8", "rgba8", "", "16UC1"]) | st.text(max_size=8), sizes,
                    sizes, sizes)  # fmt: skip
    damaged = st.builds(lambda at, data, cut: (jpeg[: at % len(jpeg)] if cut else
                                               jpeg[: at % len(jpeg)] + data + jpeg[at % len(jpeg) + len(data):]),
                        st.integers(0, 10**6), st.binary(min_size=1, max_size=32), st.booleans())  # fmt: skip
    strategy = st.tuples(damaged | st.binary(max_size=4000), st.none() | raw)

    def check(value) -> None:
        data, raw_header = value
        with tally.judging(f"{data[:40]!r}... ({len(data)} bytes), {raw_header}", (ValueError,)):
            frame = camera_frame(32, data, raw_header)
            if frame.shape != (3, 32, 32) or frame.dtype != np.uint8:
                tally.crash(f"{len(data)} bytes, {raw_header}: accepted as {frame.dtype} {frame.shape}")
        tally.serve(lambda: np.array_equal(camera_frame(32, jpeg), expected))

    with quiet_stderr():  # libjpeg warns on stderr about every damaged file it still decodes
        generate(strategy, check, inputs)
    return tally


def fuzz_load_requests(inputs: int, policy: Path, other_actions: Path) -> Tally:
    from hypothesis import strategies as st

    from sop_ros.checksums import file_sha256
    from sop_ros.model.policy import load_policy

    original, digest = policy.read_bytes(), file_sha256(policy)
    work = Path(tempfile.mkdtemp(prefix="sop-fuzz-"))
    (work / "a_directory").mkdir()
    tally = Tally()

    def load(path: Path | str, sha256: str = "") -> None:
        """As the policy node's load service does: loaded (one inference gave a finite chunk of 4 actions, or
        load_policy raised ValueError) or refused."""
        load_policy(path, action_dim=4, sha256=sha256, log=lambda _: None)

    def check(value) -> None:
        kind, at, data, pinned, name = value
        at = at % len(original)
        sha256 = digest if pinned else ""
        if kind == "path":
            target = {"missing": work / "missing.onnx", "directory": work / "a_directory", "null": "/dev/null",
                      "nul byte": str(work / "a\0b.onnx"), "text": work / name}[name if name in (
                          "missing", "directory", "null", "nul byte") else "text"]  # fmt: skip
            changed = True
        elif kind == "other actions":
            target, changed, sha256 = other_actions, True, ""
        else:
            target = work / "policy.onnx"
            damaged = original[:at] if kind == "truncate" else original[:at] + data + original[at + len(data):]
            target.write_bytes(damaged)
            changed = damaged != original
        with tally.judging(f"{kind} at {at} ({len(data)} bytes, sha256 given: {pinned})", (ValueError,)):
            load(target, sha256)
            if changed and (pinned or kind in ("path", "other actions")):
                tally.crash(f"{kind} {target} (sha256 given: {pinned}) was loaded")
        tally.serve(lambda: load(policy, digest) is None)

    strategy = st.tuples(st.sampled_from(["overwrite", "overwrite", "truncate", "path", "other actions"]),
                         st.integers(0, 2**31), st.binary(min_size=1, max_size=64), st.booleans(),
                         st.sampled_from(["missing", "directory", "null", "nul byte"]) | st.text(min_size=1,
                                                                                                  max_size=20))
    try:
        generate(strategy, check, inputs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tally


def fuzz_label_requests(inputs: int) -> Tally:
    from types import SimpleNamespace

    from hypothesis import strategies as st

    from sop_ros.robot.arbitration import LABELS, label_target

    running, ended = SimpleNamespace(episode_id="robot_0-1-00002"), SimpleNamespace(episode_id="robot_0-1-00001")
    tally = Tally()
    ids = st.sampled_from(["", running.episode_id, ended.episode_id, "robot_1-1-00002"]) | st.text(max_size=40)
    strategy = st.tuples(st.sampled_from(sorted(LABELS)) | st.integers(0, 255), ids,
                         st.sampled_from([(running, ended), (None, ended), (None, None)]))  # fmt: skip

    def check(value) -> None:
        outcome, episode_id, known = value
        tally.inputs += 1
        try:
            target, refusal = label_target(outcome, episode_id, known)
            if target is None:
                tally.refused += bool(refusal)
                if not refusal:
                    tally.crash(f"outcome {outcome}, episode {episode_id!r}: refused without a reason")
            elif outcome not in LABELS or target not in known or episode_id not in ("", target.episode_id):
                tally.crash(f"outcome {outcome}, episode {episode_id!r}: labelled {target.episode_id}")
            else:
                tally.accepted += 1
        except Exception as err:  # noqa: BLE001
            tally.crash(f"outcome {outcome}, episode {episode_id!r}: {type(err).__name__}: {err}")
        tally.serve(lambda: label_target(1, "", (running, ended))[0] is running)

    generate(strategy, check, inputs)
    return tally


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block (C libraries' warnings), restored after."""
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def fuzz_policies(work: Path) -> tuple[Path, Path]:
    """A tiny exported policy, and one whose action space is not the robot's (3 values): what the load and range
    boundaries are fed from."""
    import torch

    from sop_ros.configs.model import ModelConfig
    from sop_ros.model.export import export_onnx
    from sop_ros.model.vla import VLAPolicy, save_checkpoint

    paths = []
    for version, actions in (("sop-20261206T000000-0000001", 4), ("sop-20261206T000000-0000002", 3)):
        torch.manual_seed(0)
        model = VLAPolicy(ModelConfig(cameras=1, image_size=32, cnn_channels=(8, 16), width=32, heads=2, depth=1,
                                      head_depth=1, chunk=4, instruction_bytes=16, flow_steps=4,
                                      action_dim=actions)).eval()  # fmt: skip
        save_checkpoint(work / f"{version}.pt", model, version=version, tasks=["reach-v3"], cameras=["corner"])
        export_onnx(work / f"{version}.pt", work / f"{version}.onnx")
        paths.append(work / f"{version}.onnx")
    return paths[0], paths[1]


def run(out: Path, inputs: int, episodes: Path | None, boundaries: tuple[str, ...] = BOUNDARIES) -> dict:
    work = Path(tempfile.mkdtemp(prefix="sop-fuzz-policies-"))
    policy, other_actions = fuzz_policies(work)
    fuzzers = {
        "teleop_commands": lambda: fuzz_teleop_commands(inputs),
        "upload_pieces": lambda: fuzz_upload_pieces(inputs),
        "announcements": lambda: fuzz_announcements(inputs),
        "config_yaml": lambda: fuzz_config_yaml(inputs),
        "episode_files": lambda: fuzz_episode_files(inputs, episodes),
        "robot_reports": lambda: fuzz_robot_reports(inputs),
        "range_queries": lambda: fuzz_range_queries(inputs, policy),
        "joint_states": lambda: fuzz_joint_states(inputs),
        "images": lambda: fuzz_images(inputs),
        "load_requests": lambda: fuzz_load_requests(inputs, policy, other_actions),
        "label_requests": lambda: fuzz_label_requests(inputs),
    }
    report = {"command": f"sop chaos fuzz --json {out} --inputs {inputs}" + (f" --episodes {episodes}" if episodes
                                                                             else ""),  # fmt: skip
              "machine": machine(), "inputs_per_boundary": inputs, "boundaries": {}}
    for name in boundaries:
        started = time.monotonic()
        tally = fuzzers[name]().report() | {"seconds": 0.0}
        tally["seconds"] = round(time.monotonic() - started, 1)
        report["boundaries"][name] = tally
        print(f"  {name:16s} {tally['inputs']:6d} inputs, {tally['refused']:6d} refused, {tally['accepted']:6d} "
              f"accepted, {tally['crashes']} crashes; legitimate served {tally['legit_served']}, failed "
              f"{tally['legit_failed']}", flush=True)  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    report["crashes"] = sum(b["crashes"] for b in report["boundaries"].values())
    report["legit_failed"] = sum(b["legit_failed"] for b in report["boundaries"].values())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=lambda v: None if isinstance(v, float) and not
                              math.isfinite(v) else str(v)) + "\n")  # fmt: skip
    return report
