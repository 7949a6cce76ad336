"""Signed weights cloud -> fleet over real Zenoh sessions on loopback: announce, range download, verification.

Nothing unsigned, re-signed by another key, tampered or truncated reaches the policy node; a robot that comes
late gets the latest; the last test runs the real bridge and policy nodes.
"""

import dataclasses
import json
import subprocess
import threading

import pytest
import torch
from conftest import sop, start, wait_for
from test_bridge_upload import free_port

from sop_ros.bridge.artifacts import (
    PolicyAnnouncement,
    VerificationError,
    load_private_key,
    load_public_key,
    make_signing_keys,
    sign,
    verify,
)
from sop_ros.bridge.policy_fetcher import PolicyFetcher, Seen
from sop_ros.bridge.protocol import POLICY_ANNOUNCE, ProtocolError
from sop_ros.bridge.zenoh_session import open_session
from sop_ros.checksums import file_sha256
from sop_ros.cloud.policy_server import PolicyServer
from sop_ros.configs import ConfigError
from sop_ros.configs.bridge import PolicyDownloadConfig, PolicyServingConfig, ZenohConfig
from sop_ros.configs.model import ModelConfig
from sop_ros.model.export import export_onnx
from sop_ros.model.vla import VLAPolicy, save_checkpoint

TIER = "zenoh"  # what the tests need: conftest.TIERS

TINY = ModelConfig(width=32, depth=1, head_depth=1, heads=2, cnn_channels=(8, 8, 8, 8), chunk=8, flow_steps=2)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Tiny exported policies v1..v3 (~100 kB each: several ranges at 4 kB)."""
    out = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    model = VLAPolicy(TINY).eval()
    paths = {}
    for version in ("v1", "v2", "v3"):
        save_checkpoint(out / f"{version}.pt", model, version=version, cameras=["corner", "gripperPOV"])
        export_onnx(out / f"{version}.pt", out / f"{version}.onnx")
        paths[version] = out / f"{version}.onnx"
    return paths


@pytest.fixture
def keys(tmp_path):
    private, public = make_signing_keys(tmp_path / "keys")
    return load_private_key(private), load_public_key(public)


@pytest.fixture
def endpoint():
    return f"tcp/127.0.0.1:{free_port()}"


@pytest.fixture
def cloud(tmp_path, endpoint):
    session = open_session(ZenohConfig(listen=(endpoint,)))
    server = PolicyServer(session, PolicyServingConfig(registry_dir=str(tmp_path / "registry"), poll_s=0.05))
    yield server
    server.close()
    session.close()


class FakePolicyNode:
    """Stands in for policy/load: records what it is asked to run and runs it."""

    def __init__(self, running: str = "v0") -> None:
        self.running, self.requests = running, []

    def load(self, path, announcement):
        self.requests.append((path, announcement.version, file_sha256(path), announcement.stage))
        self.running = announcement.version
        return None

    def versions(self):
        return self.running, ""


class Robot:
    """A robot's fetcher on its own Zenoh session, run on a thread while the test looks on."""

    def __init__(self, tmp_path, endpoint, public_key, name="robot_0", **config) -> None:
        self.node = FakePolicyNode()
        self.logs: list[tuple[str, str]] = []
        self.session = open_session(ZenohConfig(connect=(endpoint,)))
        config = PolicyDownloadConfig(**{"chunk_kb": 4, "check_period_s": 0.2, **config})
        log = lambda *entry: self.logs.append(entry)  # noqa: E731
        self.fetcher = PolicyFetcher(self.session, tmp_path / name, public_key, config, self.node.load,
                                     self.node.versions, log, reply_timeout_s=2.0, robot_id=name)  # fmt: skip
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.fetcher.run, args=(self.stop,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=10)
        self.session.close()

    def errors(self) -> list[str]:
        return [message for severity, message in self.logs if severity == "error"]


@pytest.mark.unit
def test_a_registry_keeps_the_newest_artifacts_the_latest_and_the_canarys_and_every_announcement(exported, keys,
                                                                                                  tmp_path):
    from sop_ros.bridge.protocol import ArtifactRange
    from sop_ros.cloud import policy_server
    from sop_ros.cloud.policy_registry import PolicyRegistry

    registry = PolicyRegistry(tmp_path / "registry")
    registry.publish(exported["v1"], keys[0])
    registry.publish(exported["v2"], keys[0])
    registry.publish(exported["v3"], keys[0], canary=["robot_0"])  # v2 stays every other robot's
    assert registry.prune_artifacts(0) == []  # 0: keep all
    assert registry.prune_artifacts(1) == ["v1"]  # v3 is the newest, v2 the latest
    assert sorted(p.name for p in registry.directory.glob("*.onnx")) == ["v2.onnx", "v3.onnx"]
    assert registry.announcement("v1").version == "v1"  # the history stays whole
    files = policy_server.ArtifactFiles(registry, max_range_kb=64)
    with pytest.raises(ValueError, match="'v1' is no longer kept"):
        files.read("v1", ArtifactRange(offset=0, length=4096).encode())
    files.close()
    with pytest.raises(ConfigError, match="keep_artifacts=2: must be 0 .keep all. or >= 3"):
        PolicyServingConfig(keep_artifacts=2)


@pytest.mark.unit
def test_only_the_few_versions_being_fetched_keep_a_file_open(exported, keys, tmp_path, monkeypatch):
    """A learner publishing every few seconds for hours must not hold a descriptor for every version it served."""
    import os

    from sop_ros.bridge.protocol import ArtifactRange
    from sop_ros.cloud import policy_server
    from sop_ros.cloud.policy_registry import PolicyRegistry

    monkeypatch.setattr(policy_server, "OPEN_ARTIFACTS", 2)
    registry = PolicyRegistry(tmp_path / "registry")
    for version in ("v1", "v2", "v3"):
        registry.publish(exported[version], keys[0])
    files = policy_server.ArtifactFiles(registry, max_range_kb=64)
    opened = len(os.listdir("/proc/self/fd"))
    for version in ("v1", "v2", "v3", "v1", "v3"):  # v1 let go for v3, then opened again
        head = files.read(version, ArtifactRange(offset=100, length=4096).encode())
        assert head == registry.artifact_path(version).read_bytes()[100:4196]
        assert len(os.listdir("/proc/self/fd")) <= opened + 2
    files.close()
    assert len(os.listdir("/proc/self/fd")) == opened


def test_signatures_cover_every_field_and_only_the_fleet_key_verifies(keys, tmp_path):
    private, public = keys
    announcement = sign(PolicyAnnouncement("v1", "ab" * 32, 1000, 1.7e9, metrics={"success": 0.7}), private)
    verify(announcement, public)
    assert PolicyAnnouncement.decode(announcement.encode()) == announcement
    for change in ({"sha256": "cd" * 32}, {"size": 999}, {"version": "v9"}, {"created": 1.8e9},
                   {"metrics": {"success": 0.99}}, {"parent": "v0"}):  # fmt: skip
        with pytest.raises(VerificationError, match="signature does not match"):
            verify(dataclasses.replace(announcement, **change), public)
    with pytest.raises(VerificationError, match="not signed"):
        verify(dataclasses.replace(announcement, signature=""), public)
    other = make_signing_keys(tmp_path / "other")
    with pytest.raises(VerificationError, match="signature does not match"):
        verify(sign(announcement, load_private_key(other[0])), public)
    fields = {"version": "v1", "sha256": "ab" * 32, "size": -1, "created": "soon"}
    with pytest.raises(ProtocolError, match=r"size -1 must be an integer > 0; created 'soon' must be a unix time"):
        PolicyAnnouncement.decode(json.dumps(fields).encode())
    with pytest.raises(ProtocolError, match=r"version '\.\./etc' must match"):
        PolicyAnnouncement.decode(json.dumps({**fields, "version": "../etc", "size": 1, "created": 1}).encode())
    with pytest.raises(FileExistsError, match="policy_signing.key exists"):
        make_signing_keys(tmp_path / "other")
    assert (tmp_path / "other" / "policy_signing.key").stat().st_mode & 0o777 == 0o600


def test_an_announced_policy_is_downloaded_in_ranges_verified_and_handed_to_the_policy_node(
    tmp_path, cloud, endpoint, keys, exported
):
    private, public = keys
    with Robot(tmp_path, endpoint, public) as robot:
        first = cloud.registry.publish(exported["v1"], private, metrics={"success": 0.6})
        wait_for(lambda: robot.node.running == "v1", 30, what="v1 running")
        second = cloud.registry.publish(exported["v2"], private, metrics={"success": 0.7})
        wait_for(lambda: robot.node.running == "v2", 30, what="v2 running")
    assert second.parent == "v1" and first.parent == "" and second.created > first.created
    cache = tmp_path / "robot_0"
    assert [(p, v, sha) for p, v, sha, _ in robot.node.requests] == [
        (cache / "v1.onnx", "v1", first.sha256), (cache / "v2.onnx", "v2", second.sha256)]  # fmt: skip
    stats = robot.fetcher.snapshot()
    assert (stats.newest, stats.held, stats.refused) == ("v2", "v2", 0)
    assert stats.downloaded_bytes == first.size + second.size > 40 * 4096  # many 4 kB ranges, each byte once
    assert robot.errors() == []


def test_a_robot_that_starts_late_gets_the_latest_and_no_replayed_older_one(tmp_path, cloud, endpoint, keys, exported):
    private, public = keys
    old = cloud.registry.publish(exported["v1"], private)
    cloud.registry.publish(exported["v2"], private)
    wait_for(lambda: cloud.latest and cloud.latest.version == "v2", 10, what="the server to see v2")
    with Robot(tmp_path, endpoint, public) as robot:
        wait_for(lambda: robot.node.running == "v2", 30, what="the late robot to run v2")
        cloud.session.put(POLICY_ANNOUNCE, old.encode())  # an old, genuinely signed announcement, replayed
        wait_for(lambda: any("ignored policy v1: not newer than v2" in m for _, m in robot.logs), 10, what="the replay")
    assert [v for _, v, _, _ in robot.node.requests] == ["v2"]


def test_a_canary_runs_on_its_robots_only_and_a_rollback_or_promotion_reaches_every_robot(
    tmp_path, cloud, endpoint, keys, exported
):
    private, public = keys
    cloud.registry.publish(exported["v1"], private)
    with Robot(tmp_path, endpoint, public, "robot_0") as canary, Robot(tmp_path, endpoint, public, "robot_1") as other:
        wait_for(lambda: canary.node.running == other.node.running == "v1", 30, what="both on v1")
        cloud.registry.publish(exported["v2"], private, canary=["robot_0"])
        wait_for(lambda: canary.node.running == "v2", 30, what="the canary on v2")
        wait_for(lambda: any("v2 is on canary with robot_0: this robot keeps v1" in m for _, m in other.logs), 10,
                 what="the other robot to leave v2 to the canary")  # fmt: skip
        assert cloud.fleet_table()["canary"] == {"version": "v2", "robots": ["robot_0"]}
        with Robot(tmp_path, endpoint, public, "robot_2") as late:  # starts during the canary: the incumbent
            wait_for(lambda: late.node.running == "v1", 30, what="a late robot on the incumbent")
        cloud.registry.roll_back(private, {"p": 0.001}, "below the incumbent beyond noise")
        wait_for(lambda: canary.node.running == "v1", 30, what="the canary back on v1")
        cloud.registry.publish(exported["v3"], private, canary=["robot_1"])
        wait_for(lambda: other.node.running == "v3", 30, what="the second canary on v3")
        cloud.registry.promote(private, {"p": 0.4}, "not below the incumbent beyond noise")
        wait_for(lambda: canary.node.running == "v3", 30, what="the promotion to reach robot_0")
    # Each version with its stage; a version held already is only told its new stage (nothing loads again).
    assert [(v, stage) for _, v, _, stage in canary.node.requests] == [
        ("v1", ""), ("v2", "canary"), ("v1", "rolled back"), ("v3", "promoted")
    ]  # fmt: skip
    assert [(v, stage) for _, v, _, stage in other.node.requests] == [
        ("v1", ""), ("v1", "rolled back"), ("v3", "canary"), ("v3", "promoted")
    ]  # never v2  # fmt: skip
    assert canary.fetcher.snapshot().stage == "promoted" and not canary.errors() and not other.errors()
    ignored = [m for _, m in canary.logs if m.startswith("ignored policy v1")]  # asked for every 0.2 s, said once
    assert ignored == ["ignored policy v1: not newer than v2"]
    assert [r["decision"] for r in cloud.fleet_table()["rollouts"]] == ["rolled back", "promoted"]


def test_tampered_artifact_is_refused_and_the_robot_keeps_its_version(tmp_path, cloud, endpoint, keys, exported):
    private, public = keys
    announcement = cloud.registry.publish(exported["v1"], private)
    artifact = cloud.registry.artifact_path("v1")
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    artifact.write_bytes(bytes(data))
    with Robot(tmp_path, endpoint, public) as robot:
        wait_for(lambda: robot.fetcher.snapshot().refused == 1, 30, what="the refusal")
    assert robot.node.requests == [] and robot.node.running == "v0"
    assert f"the signed announcement says {announcement.sha256[:16]}" in robot.errors()[0]
    assert not list((tmp_path / "robot_0").glob("v1.onnx*"))  # neither the artifact nor a .part is kept


def test_wrong_signature_and_wrong_sha256_are_refused_before_anything_loads(tmp_path, cloud, endpoint, keys, exported):
    private, public = keys
    genuine = cloud.registry.publish(exported["v1"], private)
    impostor = load_private_key(make_signing_keys(tmp_path / "impostor")[0])
    forged = sign(dataclasses.replace(genuine, version="v2", created=genuine.created + 1), impostor)
    edited = dataclasses.replace(genuine, sha256=file_sha256(exported["v2"]), created=genuine.created + 2)
    with Robot(tmp_path, endpoint, public) as robot:
        wait_for(lambda: robot.node.running == "v1", 30, what="v1 running")
        # As if the path from the cloud were compromised (peers reach robots only through the cloud's session).
        cloud.session.put(POLICY_ANNOUNCE, forged.encode())  # signed by another key
        cloud.session.put(POLICY_ANNOUNCE, edited.encode())  # the fleet's signature over other fields
        cloud.session.put(POLICY_ANNOUNCE, b'{"version": "v3"}')  # malformed
        wait_for(lambda: robot.fetcher.snapshot().refused == 3, 10, what="three refusals")
    assert [v for _, v, _, _ in robot.node.requests] == ["v1"] and robot.fetcher.snapshot().newest == "v1"
    assert sum("signature does not match" in e for e in robot.errors()) == 2
    assert any("missing" in e or "required" in e for e in robot.errors())


def test_a_truncated_artifact_is_refused_and_an_interrupted_download_resumes(tmp_path, cloud, endpoint, keys, exported):
    private, public = keys
    cloud.registry.publish(exported["v1"], private)
    artifact = cloud.registry.artifact_path("v1")
    whole = artifact.read_bytes()
    artifact.write_bytes(whole[: len(whole) // 2])
    with Robot(tmp_path, endpoint, public) as robot:
        wait_for(lambda: robot.fetcher.snapshot().refused == 1, 30, what="the refusal")
    assert "truncated artifact: not loaded" in robot.errors()[0] and robot.node.requests == []

    # Interrupted (a robot restarted halfway): the download resumes from the bytes held.
    artifact.write_bytes(whole)
    cloud.registry.publish(exported["v2"], private)
    wait_for(lambda: cloud.latest.version == "v2", 10, what="the server to see v2")
    held = cloud.registry.latest().size // 2
    (tmp_path / "robot_1").mkdir()
    (tmp_path / "robot_1" / "v2.onnx.part").write_bytes(exported["v2"].read_bytes()[:held])
    with Robot(tmp_path, endpoint, public, name="robot_1") as robot:
        wait_for(lambda: robot.node.running == "v2", 30, what="v2 after resuming")
    assert robot.fetcher.snapshot().downloaded_bytes == cloud.registry.latest().size - held  # only what was missing
    assert file_sha256(tmp_path / "robot_1" / "v2.onnx") == file_sha256(exported["v2"])


def test_a_torn_artifact_left_by_a_crash_is_downloaded_again(tmp_path, cloud, endpoint, keys, exported):
    private, public = keys
    cloud.registry.publish(exported["v1"], private)
    with Robot(tmp_path, endpoint, public) as robot:
        wait_for(lambda: robot.node.running == "v1", 30, what="v1 running")
    cached = tmp_path / "robot_0" / "v1.onnx"
    whole = cached.read_bytes()
    cached.write_bytes(whole[: len(whole) // 3])  # downloads are not fsynced: what a power cut may leave
    with Robot(tmp_path, endpoint, public) as robot:
        assert robot.fetcher.snapshot().held == ""  # checked at start: not taken as held
        robot.node.running = "v0"
        wait_for(lambda: robot.node.running == "v1", 30, what="v1 downloaded again")
    assert cached.read_bytes() == whole and robot.fetcher.snapshot().downloaded_bytes == len(whole)
    assert any("not the signed bytes of v1" in m for _, m in robot.logs) and robot.errors() == []


@pytest.mark.e2e
def test_sop_publish_reaches_the_policy_node_through_sop_cloud_and_the_bridge(tmp_path, endpoint, exported,
                                                                                rclpy_context):  # fmt: skip
    """The commands a user runs: `sop keys`, `sop cloud`, `sop robot` (policy + bridge nodes), `sop publish`,
    `sop fleet status`; robots and cloud over mutual TLS, with the cloud's access control."""
    import rclpy
    import yaml

    from sop_ros.msg import PolicyStatus

    keys = subprocess.run(sop("keys", "--out", str(tmp_path / "keys"), "--robots", "robot_e2e"), capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert "policy_signing.pub" in keys.stdout and "access_control.json" in keys.stdout
    tls = tmp_path / "keys" / "tls"
    endpoint = endpoint.replace("tcp/", "tls/")

    def peer(name: str) -> dict:
        return {"root_ca": str(tls / "ca.pem"), "certificate": str(tls / f"{name}.pem"),
                "private_key": str(tls / f"{name}.key")}  # fmt: skip

    learner = tmp_path / "learner.yaml"
    learner.write_text(yaml.safe_dump({
        "store_dir": str(tmp_path / "store"), "ingest": {"zenoh": {"listen": [endpoint], "tls": peer("cloud"),
                                                                  "access_control": str(tls / "access_control.json")}},
        "policies": {"registry_dir": str(tmp_path / "registry"), "poll_s": 0.05,
                     "private_key": str(tmp_path / "keys/policy_signing.key")},
    }))  # fmt: skip
    robot_config = tmp_path / "robot.yaml"
    robot_config.write_text(yaml.safe_dump({
        "robot": {"id": "robot_e2e", "use_sim_time": False},
        "nodes": {
            "policy": {"policy_path": "", "status_hz": 10.0},
            "bridge": {"outbox_dir": str(tmp_path / "episodes"), "status_hz": 5.0, "zenoh": {"connect": [endpoint],
                                                                                        "tls": peer("robot_e2e")},
                       "policies": {"public_key": str(tmp_path / "keys/policy_signing.pub"), "swap": "immediate",
                                    "cache_dir": str(tmp_path / "cache"), "check_period_s": 0.5}},
        },
    }))  # fmt: skip
    cloud = start(sop("cloud", "--config", str(learner), "--duration", "120"))
    started = [cloud.stdout.readline()]
    while "listening on" not in started[-1] and started[-1] and len(started) < 20:
        started.append(cloud.stdout.readline())
    assert "listening on" in started[-1], started
    robot = start(sop("robot", "--config", str(robot_config), "--duration", "120"))
    node = rclpy.create_node("policy_watcher")
    statuses = []
    node.create_subscription(PolicyStatus, "/robot_e2e/policy/status", statuses.append, 10)
    spin = lambda: rclpy.spin_once(node, timeout_sec=0.1)  # noqa: E731
    try:
        for version in ("v1", "v2"):
            published = subprocess.run(
                sop("publish", "--config", str(learner), "--policy", str(exported[version]), "--metrics",
                    '{"success": 0.5}'), capture_output=True, text=True, check=False,
            )  # fmt: skip
            assert published.returncode == 0 and f"published {version}" in published.stdout, published.stderr
            running = lambda v=version: statuses and statuses[-1].version == v  # noqa: E731
            wait_for(running, 60, spin=spin, what=f"{version} running")
        again = subprocess.run(sop("publish", "--config", str(learner), "--policy", str(exported["v2"])),
                               capture_output=True, text=True, check=False)  # fmt: skip
        assert again.returncode == 1 and "version v2 is published already" in again.stderr
        table = {}
        wait_for(lambda: table.update(fleet_table(learner)) or table["robots"][0]["running_version"] == "v2", 30,
                 what="the fleet table to show v2")  # fmt: skip
        status = subprocess.run(sop("fleet", "status", "--config", str(learner)), capture_output=True, text=True,
                                check=True)  # fmt: skip
    finally:
        for proc in (robot, cloud):
            proc.terminate()
        outputs = [proc.communicate(timeout=30)[0] for proc in (robot, cloud)]
        node.destroy_node()
        print("\n".join(outputs))  # shown when a check fails
    assert robot.returncode == 0 and cloud.returncode == 0, outputs
    (row,) = table["robots"]
    assert (row["robot"], row["held_version"], row["newest_version"], row["policy_state"]) == (
        "robot_e2e", "v2", "v2", "ready")  # fmt: skip
    assert table["latest_version"] == "v2"
    lines = status.stdout.splitlines()
    assert lines[0] == "latest policy: v2; 1 robots reporting" and lines[2].split()[:2] == ["robot_e2e", "v2"]


def fleet_table(learner) -> dict:
    from sop_ros.cloud.services import fetch_fleet_table
    from sop_ros.configs import load_config
    from sop_ros.configs.learner import LearnerConfig

    table = fetch_fleet_table(load_config(LearnerConfig, learner))
    return table if table["robots"] else {"robots": [{"running_version": ""}]}


def test_once_each_is_kept_for_what_was_met_lately_and_bounded_for_days():
    seen = Seen(capacity=3)
    assert [seen.first_time(k) for k in ("a", "b", "a", "c", "d")] == [True, True, False, True, True]
    # "b" was met least lately, so it went first; "a", met again, stayed
    assert not seen.first_time("a") and seen.first_time("b")
    for i in range(10_000):  # a new version every few seconds
        seen.first_time(f"v{i}")
    assert len(seen) == 3 and not seen.first_time("v9999") and seen.first_time("v0")
