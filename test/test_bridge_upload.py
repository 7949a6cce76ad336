"""Episodes robot -> cloud over real Zenoh sessions on loopback: pieces, acknowledgement, idempotence, refusal."""

import json
import shutil
import socket
import threading

import pytest
from conftest import sop, start, wait_for
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CompressedImage, JointState

from sop_ros.bridge.protocol import Piece, ProtocolError, Reply, episode_key
from sop_ros.bridge.uploader import OutboxUploader
from sop_ros.bridge.zenoh_session import open_session
from sop_ros.checksums import file_sha256, recorded_sha256
from sop_ros.cloud.episode_ingest import EpisodeIngest, EpisodeIngestService
from sop_ros.cloud.episode_store import EpisodeStore, indexed_episodes
from sop_ros.configs.bridge import BridgeConfig, EpisodeIngestConfig, ZenohConfig
from sop_ros.episodes.writer import EpisodeWriter, WriterOptions

TIER = "zenoh"  # what the tests need: conftest.TIERS

ROBOT = "robot_7"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_episode(outbox, episode_id: str, frames: int = 20, robot: str = ROBOT, **metadata):
    """A finished episode file as the recorder writes it; incompressible image bytes make it ~frames x 2 kB."""
    writer = EpisodeWriter(outbox, episode_id, WriterOptions(compression="none"))
    writer.add_topic("joint_states", "sensor_msgs/JointState")
    writer.add_topic("cameras/front/image_raw/compressed", "sensor_msgs/CompressedImage")
    for i in range(frames):
        t = 1_000_000_000 + i * 33_000_000
        writer.write("joint_states", serialize_message(JointState(name=["j0"], position=[float(i)])), t)
        image = CompressedImage(format="jpeg", data=bytes((i * 7 + k * 13) % 256 for k in range(2000)))
        writer.write("cameras/front/image_raw/compressed", serialize_message(image), t)
    fields = {"episode_id": episode_id, "robot_id": robot, "task": "reach-v3", "outcome": "success",
              "steps": str(frames), **metadata}  # fmt: skip
    return writer.finish(fields)


@pytest.fixture
def endpoint():
    return f"tcp/127.0.0.1:{free_port()}"


@pytest.fixture
def cloud(tmp_path, endpoint):
    store = EpisodeStore(tmp_path / "store")
    config = EpisodeIngestConfig(zenoh=ZenohConfig(listen=(endpoint,)), allowed_robots=(ROBOT, "robot_8"))
    service = EpisodeIngestService(store, config)
    yield store
    service.close()
    store.close()


def robot_session(endpoint):
    return open_session(ZenohConfig(connect=(endpoint,)))


def bridge_config(**overrides) -> BridgeConfig:
    return BridgeConfig(chunk_kb=4, retry_initial_s=0.05, retry_max_s=0.2, scan_period_s=0.05, **overrides)


def run_until(uploader: OutboxUploader, predicate, timeout: float = 30.0):
    stop = threading.Event()
    thread = threading.Thread(target=uploader.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(predicate, timeout, what="the uploads")
    finally:
        stop.set()
        thread.join(timeout=10)


def test_episodes_go_up_in_pieces_and_leave_the_outbox_only_once_stored(tmp_path, cloud, endpoint):
    outbox = tmp_path / "outbox" / ROBOT
    files = [make_episode(outbox, f"{ROBOT}-ep{i}") for i in range(3)]
    digests = {f.stem: file_sha256(f) for f in files}
    sizes = {f.stem: f.stat().st_size for f in files}
    assert min(sizes.values()) > 8 * 4096  # several pieces each
    logs = []
    with robot_session(endpoint) as session:
        uploader = OutboxUploader(session, ROBOT, outbox, bridge_config(), lambda sev, msg: logs.append((sev, msg)))
        run_until(uploader, lambda: not uploader.pending() and cloud.count() == 3)
    stored = {e.episode_id: e for e in cloud.episodes()}
    assert {k: e.sha256 for k, e in stored.items()} == digests
    assert {k: file_sha256(cloud.root / e.path) for k, e in stored.items()} == digests
    assert {e.robot_id for e in stored.values()} == {ROBOT} and {e.task for e in stored.values()} == {"reach-v3"}
    stats = uploader.snapshot()
    assert (stats.uploaded, stats.duplicates, stats.refused, stats.dropped) == (3, 0, 0, 0)
    assert stats.bytes_sent == sum(sizes.values())
    assert not list((cloud.root / "incoming").rglob("*.part"))
    assert [m for sev, m in logs if sev == "info"] == [f"uploaded {ROBOT}-ep{i}" for i in range(3)]


def test_the_recorder_leaves_the_sha256_on_the_file_and_a_file_changed_since_is_hashed_again(tmp_path, cloud,
                                                                                             endpoint):
    outbox = tmp_path / "outbox" / ROBOT
    kept, changed = make_episode(outbox, f"{ROBOT}-a"), make_episode(outbox, f"{ROBOT}-b")
    assert recorded_sha256(kept) == file_sha256(kept) and recorded_sha256(changed) == file_sha256(changed)
    recorded = recorded_sha256(changed)
    with open(changed, "r+b") as f:  # one byte of a camera frame, changed in place: same size, same digest left
        f.seek(changed.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert recorded_sha256(changed) == recorded != file_sha256(changed)
    digests = {kept.stem: file_sha256(kept), changed.stem: file_sha256(changed)}
    with robot_session(endpoint) as session:
        uploader = OutboxUploader(session, ROBOT, outbox, bridge_config(), lambda *_: None)
        run_until(uploader, lambda: uploader.snapshot().uploaded == 2)
    assert {e.episode_id: e.sha256 for e in cloud.episodes()} == digests  # stored as the file is now
    grown = make_episode(tmp_path / "other", "grown")
    with open(grown, "ab") as f:  # a recorded digest does not describe a file of another size
        f.write(b"x")
    assert recorded_sha256(grown) is None


def test_a_resent_episode_is_acknowledged_and_never_stored_twice(tmp_path, cloud, endpoint):
    outbox = tmp_path / "outbox" / ROBOT
    path = make_episode(outbox, f"{ROBOT}-again")
    copy = shutil.copy(path, tmp_path / "kept.mcap")
    with robot_session(endpoint) as session:
        uploader = OutboxUploader(session, ROBOT, outbox, bridge_config(after_upload="archive"), lambda *_: None)
        size = path.stat().st_size
        assert uploader.upload(path) == Reply("stored", offset=size)
        assert (outbox / "uploaded" / path.name).exists() and not path.exists()  # archived, not deleted
        shutil.copy(copy, path)  # the robot restarted before it removed the file: it sends it again
        reply = uploader.upload(path)
    assert reply.status == "stored" and reply.duplicate
    assert cloud.count() == 1 and uploader.snapshot().duplicates == 1


@pytest.mark.unit
def test_an_upload_resumes_where_it_stopped_after_the_cloud_restarts(tmp_path):
    path = make_episode(tmp_path / "outbox", f"{ROBOT}-resume", frames=40)
    data, sha = path.read_bytes(), file_sha256(path)
    key, size = episode_key(ROBOT, path.stem), len(data)
    store = EpisodeStore(tmp_path / "store")
    ingest = EpisodeIngest(store, EpisodeIngestConfig())
    assert ingest.handle(key, Piece(size, sha).encode(), None) == Reply("partial", offset=0)
    assert ingest.handle(key, Piece(size, sha, 0).encode(), data[:10000]) == Reply("partial", offset=10000)
    # A piece that is not where the upload stands is not written: the reply says where to go on.
    assert ingest.handle(key, Piece(size, sha, 20000).encode(), data[20000:30000]) == Reply("partial", offset=10000)
    store.close()  # the cloud goes down ...

    store = EpisodeStore(tmp_path / "store")  # ... and comes back: the probe finds the bytes it holds
    ingest = EpisodeIngest(store, EpisodeIngestConfig())
    assert ingest.handle(key, Piece(size, sha).encode(), None) == Reply("partial", offset=10000)
    assert ingest.handle(key, Piece(size, sha, 10000).encode(), data[10000:]) == Reply("stored", offset=size)
    assert store.get(path.stem).sha256 == sha and store.count() == 1


@pytest.mark.unit
def test_bytes_damaged_on_the_way_are_asked_for_again(tmp_path):
    path = make_episode(tmp_path / "outbox", f"{ROBOT}-damaged")
    data, sha = path.read_bytes(), file_sha256(path)
    key = episode_key(ROBOT, path.stem)
    store = EpisodeStore(tmp_path / "store")
    ingest = EpisodeIngest(store, EpisodeIngestConfig())
    damaged = data[:100] + bytes([data[100] ^ 1]) + data[101:]
    assert ingest.handle(key, Piece(len(data), sha, 0).encode(), damaged) == Reply("partial", offset=0)
    assert store.count() == 0
    assert ingest.handle(key, Piece(len(data), sha, 0).encode(), data).status == "stored"


def test_malformed_uploads_are_refused_with_the_reason_and_the_service_goes_on(tmp_path, cloud, endpoint):
    outbox = tmp_path / "outbox" / ROBOT
    outbox.mkdir(parents=True)
    garbage = outbox / f"{ROBOT}-garbage.mcap"
    garbage.write_bytes(b"not an mcap file" * 1000)
    empty = outbox / f"{ROBOT}-empty.mcap"
    empty.write_bytes(b"")
    other = make_episode(outbox, f"{ROBOT}-other", robot="robot_9")  # its metadata names another robot
    good = make_episode(outbox, f"{ROBOT}-good")
    logs = []
    with robot_session(endpoint) as session:
        uploader = OutboxUploader(session, ROBOT, outbox, bridge_config(), lambda sev, msg: logs.append((sev, msg)))
        assert uploader.upload(garbage).status == "refused"
        assert "not a finished MCAP file" in uploader.upload(empty).reason  # its one empty piece is checked
        assert uploader.upload(other).status == "refused"
        assert uploader.upload(good).status == "stored"
        for header, payload, reason in [
            (b"{not json", b"", "piece header: not JSON"),
            (Piece(10, "ab" * 32, 0).encode(), b"x" * 11, "runs past the size 10"),
            (b'{"size": -1, "sha256": ""}', b"", "size -1 must be an integer >= 0"),
        ]:
            replies = list(session.get(episode_key(ROBOT, "bad"), payload=payload, attachment=header, timeout=10))
            refusal = Reply.decode(replies[0].ok.payload.to_bytes())
            assert refusal.status == "refused" and reason in refusal.reason
        stranger = OutboxUploader(session, "robot_99", outbox, bridge_config(), lambda *_: None)
        make_episode(outbox, "robot_99-ep", robot="robot_99")
        assert "robot 'robot_99' may not upload" in stranger.upload(outbox / "robot_99-ep.mcap").reason
    assert [e.episode_id for e in cloud.episodes()] == [good.stem]
    rejected = outbox / "rejected"
    assert (rejected / garbage.name).exists() and "not a" in (rejected / f"{garbage.name}.reason.txt").read_text()
    assert (rejected / empty.name).exists()
    assert "metadata robot_id is 'robot_9'" in (rejected / f"{other.name}.reason.txt").read_text()
    assert any(sev == "error" and "refused" in m and garbage.stem in m for sev, m in logs)


def test_the_outbox_waits_for_a_cloud_that_is_away_and_drops_the_oldest_past_its_quota(tmp_path, endpoint):
    outbox = tmp_path / "outbox" / ROBOT
    files = [make_episode(outbox, f"{ROBOT}-q{i}") for i in range(4)]
    quota_mb = 2.5 * files[0].stat().st_size / 2**20  # room for two and a half
    logs = []
    with robot_session(endpoint) as session:
        config = bridge_config(outbox_quota_mb=quota_mb, reply_timeout_s=0.5)
        uploader = OutboxUploader(session, ROBOT, outbox, config, lambda sev, msg: logs.append((sev, msg)))
        run_until(uploader, lambda: uploader.snapshot().last_error != "", timeout=20)  # no cloud yet
        assert [p.stem for p in uploader.pending()] == [f"{ROBOT}-q2", f"{ROBOT}-q3"]
        assert uploader.snapshot().dropped_ids == [f"{ROBOT}-q0", f"{ROBOT}-q1"]
        assert any(sev == "warn" and "over its quota" in m for sev, m in logs)
        assert any(sev == "error" and f"deleted episode {ROBOT}-q0" in m for sev, m in logs)

        store = EpisodeStore(tmp_path / "store")  # the cloud comes up: what waited goes up
        service = EpisodeIngestService(store, EpisodeIngestConfig(zenoh=ZenohConfig(listen=(endpoint,))))
        try:
            run_until(uploader, lambda: store.count() == 2 and not uploader.pending())
        finally:
            service.close()
    assert sorted(e.episode_id for e in store.episodes()) == [f"{ROBOT}-q2", f"{ROBOT}-q3"]


@pytest.mark.unit
def test_a_file_renamed_in_but_not_indexed_before_a_crash_is_indexed_on_restart(tmp_path):
    store_root = tmp_path / "store"
    EpisodeStore(store_root).close()
    path = make_episode(store_root / "episodes" / ROBOT, f"{ROBOT}-orphan")  # as if the insert never happened
    store = EpisodeStore(store_root)
    assert [(e.episode_id, e.robot_id, e.sha256) for e in store.episodes()] == [(path.stem, ROBOT, file_sha256(path))]


@pytest.mark.unit
def test_the_store_reads_the_rollout_stage_each_episode_ran_at(tmp_path):
    store_root = tmp_path / "store"
    make_episode(store_root / "episodes" / ROBOT, f"{ROBOT}-a", frames=1, rollout_stage="canary")
    make_episode(store_root / "episodes" / ROBOT, f"{ROBOT}-b", frames=1)  # recorded before rollouts had stages
    store = EpisodeStore(store_root)
    indexed = {e.episode_id: e.rollout_stage for e in store.episodes()}
    assert indexed == {f"{ROBOT}-a": "canary", f"{ROBOT}-b": ""}
    assert store.get(f"{ROBOT}-a").rollout_stage == "canary"
    store.close()
    assert {e.episode_id: e.rollout_stage for e in indexed_episodes(store_root)} == indexed


def test_the_bridge_node_uploads_the_recorders_outbox_and_reports_on_bridge_status(tmp_path, cloud, endpoint,
                                                                                      rclpy_context):  # fmt: skip
    import rclpy
    import yaml

    from sop_ros.msg import BridgeStatus

    outbox_root = tmp_path / "episodes"
    files = [make_episode(outbox_root / ROBOT, f"{ROBOT}-node{i}") for i in range(2)]
    config = tmp_path / "robot.yaml"
    config.write_text(yaml.safe_dump({
        "robot": {"id": ROBOT},
        "nodes": {"bridge": {"outbox_dir": str(outbox_root), "chunk_kb": 8, "status_hz": 5.0,
                             "zenoh": {"connect": [endpoint]}}},
    }))  # fmt: skip
    robot = start(sop("robot", "--config", str(config)))
    node = rclpy.create_node("bridge_watcher")
    statuses = []
    node.create_subscription(BridgeStatus, f"/{ROBOT}/bridge/status", statuses.append, 10)
    try:
        wait_for(lambda: cloud.count() == 2, 60, what="both episodes stored")
        files.append(make_episode(outbox_root / ROBOT, f"{ROBOT}-node2"))  # one recorded while running
        wait_for(lambda: statuses and statuses[-1].uploaded == 3 and statuses[-1].outbox_episodes == 0, 30,
                 spin=lambda: rclpy.spin_once(node, timeout_sec=0.1), what="the third upload")  # fmt: skip
    finally:
        robot.terminate()
        output, _ = robot.communicate(timeout=30)
        node.destroy_node()
    assert robot.returncode == 0, output
    last = statuses[-1]
    assert last.cloud_reachable and (last.refused, last.dropped, last.outbox_bytes) == (0, 0, 0)
    assert last.bytes_sent == sum(f.stat().st_size for f in cloud.root.glob(f"episodes/{ROBOT}/*.mcap"))
    assert sorted(e.episode_id for e in cloud.episodes()) == sorted(f.stem for f in files)
    assert not any(p.exists() for p in files)


@pytest.mark.unit
def test_bridge_configs_name_the_wrong_key(tmp_path):
    from sop_ros.configs import ConfigError, from_dict
    from sop_ros.configs.robot import RobotLaunchConfig

    with pytest.raises(ConfigError, match=r"nodes\.bridge\.zenoh\.connect\[0\]='localhost:7447': must be an endpoint"):
        from_dict(RobotLaunchConfig, {"nodes": {"bridge": {"zenoh": {"connect": ["localhost:7447"]}}}})
    with pytest.raises(ConfigError, match=r"nodes\.bridge\.outbox_dir='a': must equal recorder\.output_dir \('b'\)"):
        from_dict(RobotLaunchConfig, {"nodes": {"bridge": {"outbox_dir": "a"}, "recorder": {"output_dir": "b"}}})
    with pytest.raises(ConfigError, match=r"nodes\.bridge\.chunk_kb=1: must be in 4\.\.65536"):
        from_dict(RobotLaunchConfig, {"nodes": {"bridge": {"chunk_kb": 1}}})


def test_sop_ingest_serves_uploads_into_the_learners_store(tmp_path, endpoint):
    import subprocess

    import yaml

    config = tmp_path / "learner.yaml"
    store_dir = tmp_path / "store"
    config.write_text(yaml.safe_dump({"store_dir": str(store_dir), "ingest": {"zenoh": {"listen": [endpoint]}}}))
    service = start(sop("ingest", "--config", str(config), "--duration", "60"))
    try:
        assert "listening on" in service.stdout.readline()
        path = make_episode(tmp_path / "outbox", f"{ROBOT}-cli")
        with robot_session(endpoint) as session:
            uploader = OutboxUploader(session, ROBOT, path.parent, bridge_config(), lambda *_: None)
            wait_for(lambda: uploader.upload(path).status == "stored", 30, what="the upload")
    finally:
        service.terminate()
        output, _ = service.communicate(timeout=30)
    assert service.returncode == 0 and f"stored {ROBOT}-cli" in output and "stopped; 1 episodes" in output
    missing = subprocess.run(
        sop("ingest", "--config", str(tmp_path / "none.yaml")), capture_output=True, text=True, check=False
    )
    assert missing.returncode == 2 and "none.yaml: no such config file" in missing.stderr


@pytest.mark.unit
def test_a_file_being_received_is_flushed_to_disk_as_it_grows(tmp_path):
    """The store's uploads flush their pages on a thread every `every` bytes, so the commit's fsync is short;
    a flush never runs on a closed descriptor, and the bytes are the ones written."""
    from sop_ros.episodes.durable import BackgroundSync

    flushed = []
    with open(tmp_path / "part", "wb") as f:
        sync = BackgroundSync(f, every=1000)
        for i in range(10):
            f.write(bytes([i]) * 400)
            sync.wrote()
            if sync._last is not None and sync._last not in flushed:
                flushed.append(sync._last)
            sync.wait()  # done before the next write: the count below does not depend on the disk's speed
    assert len(flushed) == 3  # at 1200, 2400 and 3600 bytes: each once 1000 more were written
    assert all(future.done() and future.exception() is None for future in flushed)
    assert (tmp_path / "part").read_bytes() == b"".join(bytes([i]) * 400 for i in range(10))


def test_a_robot_report_is_kept_with_exactly_its_fields_and_a_malformed_one_is_refused_naming_the_field():
    from sop_ros.bridge.bridge_node import robot_report
    from sop_ros.bridge.protocol import decode_robot_report
    from sop_ros.msg import BridgeStatus

    report = robot_report(BridgeStatus(last_error="x" * 5000, seconds_since_upload=-1.0), None)
    kept = decode_robot_report(json.dumps({**report, "extra": [1, 2]}).encode())
    assert kept == {**report, "last_error": "x" * 1000} and "extra" not in kept  # an error is cut by its robot
    for field, value, why in (("running_version", 3, "running_version 3 is missing"),
                              ("outbox_bytes", -5, "outbox_bytes -5 is missing"),
                              ("uploaded", True, "uploaded True is missing"),
                              ("time", float("nan"), "time nan is missing"),
                              ("seconds_since_upload", -2.0, "seconds_since_upload -2.0 is missing")):  # fmt: skip
        with pytest.raises(ProtocolError, match=f"robot report: {why}, of the wrong type or out of range"):
            decode_robot_report(json.dumps({**report, field: value}).encode())
    with pytest.raises(ProtocolError, match="robot report: policy_state None is missing"):
        decode_robot_report(json.dumps({k: v for k, v in report.items() if k != "policy_state"}).encode())
