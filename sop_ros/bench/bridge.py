"""`sop bench bridge`: the bridge's throughput against raw Zenoh, all over TCP loopback with shared memory off.

1. raw        one process puts 1 MB messages (reliable, blocking congestion control) to a subscriber in another;
              MB/s from the first put to the last byte received. The ceiling for everything below.
2. upload     episode files (recorder-written MCAP, camera bytes that do not compress, like JPEG) go from a
              robot's outbox (sop_ros.bridge.uploader, using the sha256 the recorder left on each file) into the
              cloud's ingest (another process): sent in acknowledged pieces, hashed, checked, fsynced and indexed,
              each removed from the outbox once stored.
3. weights    the cloud (this process) announces a signed ~100 MB policy to `robots` robots, each `sop robot`
              with a bridge and a policy node (swap immediate, starting without a policy). all_verified_s: from
              the announcement to the last robot holding the verified artifact; all_running_s: to the last
              policy node running it.
4. floors     what the host allows whatever the bridge does, with nothing of sop_ros but the session config:
              the upload's bytes as acknowledged 1 MB queries (the uploader's window in flight) to a bare store
              that copies, writes and hashes them; and the same 100 MB put once to `robots` bare receivers that
              copy, write and hash it (holding a verified artifact). And the store's disk: the upload's bytes
              written and fsynced per episode, the ceiling of any upload acknowledged once durable.

MB is 10^6 bytes throughout.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from sop_ros.host import free_endpoint, machine, sop_command, start_logged, stop_process

MB = 1_000_000
MESSAGE_BYTES = 1 << 20
RAW_MESSAGES = 512


def zenoh_config(listen: str = "", connect: str = ""):
    from sop_ros.configs.bridge import ZenohConfig

    return ZenohConfig(listen=(listen,) if listen else (), connect=(connect,) if connect else ())


# -- 1. raw ------------------------------------------------------------------------------------------------------


def _raw_receiver(endpoint: str, expected: int, events: mp.Queue) -> None:
    from sop_ros.bridge.zenoh_session import open_session

    received, done = [0], threading.Event()

    def count(sample) -> None:
        received[0] += len(sample.payload)
        if received[0] >= expected:
            events.put(("last", time.monotonic()))  # CLOCK_MONOTONIC: one clock for every process on the host
            done.set()

    with open_session(zenoh_config(listen=endpoint)) as session:
        session.declare_subscriber("bench/raw/data", count)
        session.declare_subscriber("bench/raw/hello", lambda _: events.put(("hello", 0.0)))
        events.put(("ready", 0.0))
        done.wait(120)


def raw_zenoh_tcp(trials: int = 3) -> dict:
    import zenoh

    from sop_ros.bridge.zenoh_session import open_session

    rates = []
    for _ in range(trials):
        endpoint, events = free_endpoint(), mp.get_context("spawn").Queue()
        receiver = mp.get_context("spawn").Process(
            target=_raw_receiver, args=(endpoint, RAW_MESSAGES * MESSAGE_BYTES, events), daemon=True
        )
        receiver.start()
        assert events.get(timeout=60)[0] == "ready"
        with open_session(zenoh_config(connect=endpoint)) as session:
            hello = session.declare_publisher("bench/raw/hello")
            for _ in range(600):  # until the subscriber is reachable
                hello.put(b"?")
                try:
                    if events.get(timeout=0.1)[0] == "hello":
                        break
                except queue.Empty:
                    continue
            publisher = session.declare_publisher("bench/raw/data", congestion_control=zenoh.CongestionControl.BLOCK)
            payload = os.urandom(MESSAGE_BYTES)
            start = time.monotonic()
            for _ in range(RAW_MESSAGES):
                publisher.put(payload)
            while (event := events.get(timeout=120))[0] != "last":
                pass
        receiver.join(timeout=30)
        rates.append(RAW_MESSAGES * MESSAGE_BYTES / MB / (event[1] - start))
    return {"MBps_trials": [round(r, 1) for r in rates], "MBps": round(sorted(rates)[len(rates) // 2], 1)}


def _verifying_receiver(index: int, endpoint: str, expected: int, sink: str, events: mp.Queue) -> None:
    """A robot cut down to what holding a verified artifact costs: each byte copied out of Zenoh, written to
    a file and hashed. No ROS, no protocol."""
    from sop_ros.bridge.zenoh_session import open_session
    from sop_ros.checksums import BackgroundSha256

    received, done, digest = [0], threading.Event(), BackgroundSha256()
    with open(sink, "wb") as file, open_session(zenoh_config(connect=endpoint)) as session:

        def take(sample) -> None:
            data = sample.payload.to_bytes()
            file.write(data)
            digest.update(data)
            received[0] += len(data)
            if received[0] >= expected:
                digest.hexdigest()
                events.put(("last", time.monotonic()))
                done.set()

        session.declare_subscriber("bench/fanout/data", take)
        session.declare_subscriber("bench/fanout/hello", lambda _: events.put(("hello", index)))
        events.put(("ready", index))
        done.wait(120)


def bare_fanout(workdir: Path, receivers: int, megabytes: int) -> float:
    """Seconds from the first put of `megabytes` MB to the last of `receivers` bare receivers holding it hashed:
    the floor under weights.all_verified_s on this host, with nothing of sop_ros but the session config."""
    import zenoh

    from sop_ros.bridge.zenoh_session import open_session

    workdir.mkdir(parents=True, exist_ok=True)
    endpoint, ctx = free_endpoint(), mp.get_context("spawn")
    events = ctx.Queue()
    with open_session(zenoh_config(listen=endpoint)) as session:
        procs = [ctx.Process(target=_verifying_receiver, daemon=True,
                             args=(i, endpoint, megabytes * MB, str(workdir / f"{i}.bin"), events))
                 for i in range(receivers)]  # fmt: skip
        for proc in procs:
            proc.start()
        ready = {events.get(timeout=60)[1] for _ in range(receivers)}
        hello, greeted = session.declare_publisher("bench/fanout/hello"), set()
        while len(greeted) < receivers:  # until every receiver is reachable
            hello.put(b"?")
            try:
                _, index = events.get(timeout=0.1)
                greeted.add(index)
            except queue.Empty:
                continue
        publisher = session.declare_publisher("bench/fanout/data", congestion_control=zenoh.CongestionControl.BLOCK)
        payload = os.urandom(MB)  # size_MB pieces of 1 MB: the artifact's size
        time.sleep(0.5)  # late hellos drain
        while not events.empty():
            events.get_nowait()
        start = time.monotonic()
        for _ in range(megabytes):
            publisher.put(payload)
        last: list[float] = []
        while len(last) < receivers:
            kind, value = events.get(timeout=120)
            if kind == "last":
                last.append(value)
        for proc in procs:
            proc.join(timeout=30)
    assert ready == set(range(receivers))
    return round(max(last) - start, 3)


# -- 2. episode upload ----------------------------------------------------------------------------------------------


def _ingest_process(endpoint: str, store_dir: str, stop: mp.Event, ready: mp.Event) -> None:
    from sop_ros.bridge.zenoh_session import open_session
    from sop_ros.cloud.episode_ingest import EpisodeIngestService
    from sop_ros.cloud.episode_store import EpisodeStore
    from sop_ros.configs.bridge import EpisodeIngestConfig

    store = EpisodeStore(store_dir)
    with open_session(zenoh_config(listen=endpoint)) as session:
        service = EpisodeIngestService(store, EpisodeIngestConfig(max_episode_mb=4096), session)
        ready.set()
        stop.wait(600)
        service.close()
    store.close()


def write_episode(outbox: Path, episode_id: str, megabytes: float, robot_id: str) -> Path:
    """A recorder-shaped episode: joint states and 40 kB camera frames of random bytes (JPEG does not compress)."""
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CompressedImage, JointState

    from sop_ros.episodes.writer import EpisodeWriter, WriterOptions

    writer = EpisodeWriter(outbox, episode_id, WriterOptions(compression="none"))
    writer.add_topic("joint_states", "sensor_msgs/JointState")
    writer.add_topic("cameras/front/image_raw/compressed", "sensor_msgs/CompressedImage")
    frame = 40_000
    pool = os.urandom(frame * 8)
    frames = int(megabytes * MB / frame)
    for i in range(frames):
        stamp = 1_000_000_000 + i * 33_333_333
        writer.write("joint_states", serialize_message(JointState(name=["j0"], position=[float(i)])), stamp)
        start = (i * 7919) % (frame * 7)
        image = CompressedImage(format="jpeg", data=pool[start : start + frame])
        writer.write("cameras/front/image_raw/compressed", serialize_message(image), stamp)
    return writer.finish({"episode_id": episode_id, "robot_id": robot_id, "task": "reach-v3", "outcome": "success",
                          "steps": str(frames)})  # fmt: skip


def episode_upload(workdir: Path, episodes: int, episode_mb: float) -> dict:
    from sop_ros.bridge.uploader import OutboxUploader
    from sop_ros.bridge.zenoh_session import open_session
    from sop_ros.configs.bridge import BridgeConfig

    endpoint, ctx = free_endpoint(), mp.get_context("spawn")
    stop, ready = ctx.Event(), ctx.Event()
    cloud = ctx.Process(target=_ingest_process, args=(endpoint, str(workdir / "store"), stop, ready), daemon=True)
    cloud.start()
    outbox = workdir / "outbox" / "robot_0"
    files = [write_episode(outbox, f"robot_0-bench{i:03d}", episode_mb, "robot_0") for i in range(episodes)]
    total = sum(f.stat().st_size for f in files)
    ready.wait(60)
    with open_session(zenoh_config(connect=endpoint)) as session:
        uploader = OutboxUploader(session, "robot_0", outbox, BridgeConfig(), lambda *_: None)
        uploader.upload(write_episode(workdir / "warmup", "robot_0-warmup", 1, "robot_0"))  # the link is up
        halt = threading.Event()
        worker = threading.Thread(target=uploader.run, args=(halt,))
        start = time.monotonic()
        worker.start()  # as the bridge node runs it: oldest first, the next file hashed while one goes up
        while uploader.snapshot().uploaded < episodes + 1 and worker.is_alive():
            time.sleep(0.001)
        elapsed = time.monotonic() - start
        halt.set()
        worker.join()
    stop.set()
    cloud.join(timeout=30)
    stats = uploader.snapshot()
    if stats.uploaded != episodes + 1 or stats.refused or any(f.exists() for f in files):
        raise RuntimeError(f"upload bench: {stats}")
    return {"episodes": episodes, "episode_MB": round(total / episodes / MB, 1), "seconds": round(elapsed, 3),
            "MBps": round(total / MB / elapsed, 1)}  # fmt: skip


def _bare_store(endpoint: str, sink: str, stop: mp.Event, events: mp.Queue) -> None:
    """A cloud cut down to what an acknowledged upload costs: each piece copied out of Zenoh, written to a file
    and hashed (on a second thread, as the store does), then answered. No validation, fsync or index."""
    from sop_ros.bridge.zenoh_session import open_session
    from sop_ros.checksums import BackgroundSha256

    digest = BackgroundSha256()
    with open(sink, "wb") as file, open_session(zenoh_config(listen=endpoint)) as session:

        def take(query) -> None:
            data = query.payload.to_bytes()
            file.write(data)
            digest.update(data)
            query.reply(query.key_expr, b"ok")

        queryable = session.declare_queryable("bench/bare_upload", take)
        events.put("ready")
        stop.wait(600)
        queryable.undeclare()
        digest.hexdigest()


def durable_write(workdir: Path, megabytes: int, files: int) -> float:
    """MB/s of writing `megabytes` MB as `files` files on the store's disk, each fsynced as a stored episode is:
    a ceiling for any upload acknowledged only once durable, whatever the network does."""
    workdir.mkdir(parents=True, exist_ok=True)
    payload, per_file = os.urandom(MB), megabytes // files
    start = time.monotonic()
    for i in range(files):
        with open(workdir / f"{i}.bin", "wb") as f:
            for _ in range(per_file):
                f.write(payload)
            f.flush()
            os.fsync(f.fileno())
    elapsed = time.monotonic() - start
    shutil.rmtree(workdir)
    return round(per_file * files / elapsed, 1)


def bare_upload(workdir: Path, megabytes: int) -> float:
    """MB/s of `megabytes` MB sent as 1 MB queries, `window` in flight (the uploader's), to a bare store: the
    ceiling under episode_upload_MBps on this host, with nothing of sop_ros but the session config."""
    from collections import deque

    from sop_ros.bridge.zenoh_session import open_session
    from sop_ros.configs.bridge import BridgeConfig

    workdir.mkdir(parents=True, exist_ok=True)
    endpoint, ctx = free_endpoint(), mp.get_context("spawn")
    stop, events = ctx.Event(), ctx.Queue()
    store = ctx.Process(target=_bare_store, args=(endpoint, str(workdir / "sink.bin"), stop, events), daemon=True)
    store.start()
    assert events.get(timeout=60) == "ready"
    window, payload = BridgeConfig().window, os.urandom(MB)
    with open_session(zenoh_config(connect=endpoint)) as session:
        for _ in range(600):  # until the store answers
            if any(r.ok is not None for r in session.get("bench/bare_upload", payload=b"", timeout=1.0)):
                break
        in_flight: deque = deque()
        start = time.monotonic()
        for _ in range(megabytes):
            in_flight.append(session.get("bench/bare_upload", payload=payload, timeout=10.0))
            if len(in_flight) >= window:
                next(iter(in_flight.popleft()))
        while in_flight:
            next(iter(in_flight.popleft()))
        elapsed = time.monotonic() - start
    stop.set()
    store.join(timeout=30)
    return round(megabytes / elapsed, 1)


# -- 3. weights -----------------------------------------------------------------------------------------------------


def export_policy(workdir: Path, version: str, width: int = 424, depth: int = 8) -> Path:
    """A real exported policy of about 100 MB (its size is in its weights: ~25 M float32 parameters)."""
    import dataclasses

    import torch

    from sop_ros.configs.model import ModelConfig
    from sop_ros.model.export import export_onnx
    from sop_ros.model.vla import VLAPolicy, save_checkpoint

    torch.manual_seed(0)
    model = VLAPolicy(dataclasses.replace(ModelConfig(), width=width, depth=depth, flow_steps=2)).eval()
    with torch.no_grad():  # stacked layers start as copies, and the exporter stores identical weights once
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 1e-3)
    save_checkpoint(workdir / f"{version}.pt", model, version=version, cameras=["corner", "gripperPOV"])
    export_onnx(workdir / f"{version}.pt", workdir / f"{version}.onnx")
    return workdir / f"{version}.onnx"


def robot_yaml(robot: str, endpoint: str, workdir: Path, public_key: Path) -> dict:
    return {
        "robot": {"id": robot, "use_sim_time": False},
        "nodes": {
            "policy": {"policy_path": "", "status_hz": 10.0, "inference_threads": 1},
            "bridge": {"outbox_dir": str(workdir / "outboxes"), "status_hz": 2.0, "zenoh": {"connect": [endpoint]},
                       "policies": {"public_key": str(public_key), "cache_dir": str(workdir / "cache"),
                                    "swap": "immediate"}},
        },
    }  # fmt: skip


def fleet_ready(server) -> int:
    """Robots whose bridge reports to the cloud and sees its policy node's status."""
    return sum(r["policy_state"] != "no status" for r in server.fleet_table()["robots"])


def weight_distribution(workdir: Path, robots: int) -> dict:
    import rclpy
    import yaml

    from sop_ros.bridge.artifacts import load_private_key, make_signing_keys
    from sop_ros.bridge.zenoh_session import open_session
    from sop_ros.cloud.policy_server import PolicyServer
    from sop_ros.configs.bridge import PolicyServingConfig
    from sop_ros.msg import PolicyStatus

    artifact = export_policy(workdir, "bench-weights")
    private, public = make_signing_keys(workdir / "keys")
    endpoint = free_endpoint()
    names = [f"robot_{i}" for i in range(robots)]
    running: dict[str, float] = {}
    rclpy.init()
    watcher = rclpy.create_node("bench_bridge_watcher")

    def on_status(robot: str, msg: PolicyStatus) -> None:
        if msg.version == "bench-weights" and robot not in running:
            running[robot] = time.monotonic()

    for robot in names:
        watcher.create_subscription(PolicyStatus, f"/{robot}/policy/status", lambda m, r=robot: on_status(r, m), 10)
    halt = threading.Event()

    def spin() -> None:
        while not halt.is_set():
            rclpy.spin_once(watcher, timeout_sec=0.05)

    spinner = threading.Thread(target=spin, daemon=True)
    procs = []
    with open_session(zenoh_config(listen=endpoint)) as session:
        server = PolicyServer(session, PolicyServingConfig(registry_dir=str(workdir / "registry")))
        try:
            for robot in names:
                config = workdir / f"{robot}.yaml"
                config.write_text(yaml.safe_dump(robot_yaml(robot, endpoint, workdir, public)))
                procs.append(start_logged(sop_command("robot", "--config", str(config)), workdir / f"{robot}.log"))
            deadline = time.monotonic() + 120
            while (ready := fleet_ready(server)) < robots:  # every bridge reporting, with its policy node up
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {ready} of {robots} robots reported a running policy node")
                time.sleep(0.1)
            time.sleep(1.0)  # the last processes' start-up settles: the measurement starts on a quiet fleet
            spinner.start()
            key = load_private_key(private)
            start = time.monotonic()  # publish() returns once the announcement is put
            announcement = server.publish(artifact, key, metrics={"bench": 1.0})
            announced = time.monotonic()
            verified: dict[str, float] = {}
            deadline = announced + 600
            while (len(verified) < robots or len(running) < robots) and time.monotonic() < deadline:
                for robot in names:
                    if robot not in verified and (workdir / "cache" / robot / "bench-weights.onnx").exists():
                        verified[robot] = time.monotonic()
                time.sleep(0.01)
            if len(verified) < robots or len(running) < robots:
                raise RuntimeError(f"weights bench: verified {sorted(verified)}, running {sorted(running)}")
        finally:
            halt.set()
            spinner.join(timeout=5) if spinner.is_alive() else None
            for proc in procs:
                stop_process(proc, signal.SIGTERM)
            server.close()
            watcher.destroy_node()
            rclpy.try_shutdown()
    all_verified = max(verified.values()) - announced
    size_mb = announcement.size / MB
    return {
        "size_MB": round(size_mb, 1),
        "robots": robots,
        "publish_s": round(announced - start, 3),
        "all_verified_s": round(all_verified, 3),
        "all_running_s": round(max(running.values()) - announced, 3),
        "effective_MBps": round(size_mb * robots / all_verified, 1),
        "verified_s_per_robot": [round(verified[r] - announced, 3) for r in names],
    }


def run(out: Path, episodes: int = 4, episode_mb: float = 64.0, robots: int = 8, workdir: Path | None = None) -> dict:
    workdir = Path(workdir or "runs/bench-bridge")
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    print("bench bridge: raw Zenoh over TCP loopback (1 MB puts, shared memory off) ...", flush=True)
    raw = raw_zenoh_tcp()
    print(f"  {raw['MBps']} MB/s (trials {raw['MBps_trials']})", flush=True)
    print(f"bench bridge: {episodes} episodes of {episode_mb:g} MB, outbox -> ingest ...", flush=True)
    upload = episode_upload(workdir / "upload", episodes, episode_mb)
    print(f"  {upload['MBps']} MB/s", flush=True)
    megabytes = round(upload["episodes"] * upload["episode_MB"])
    print(f"bench bridge: floor: {megabytes} MB as acknowledged 1 MB queries to a bare store that writes and "
          "hashes ...", flush=True)  # fmt: skip
    upload_floor = {"MBps": bare_upload(workdir / "upload_floor", megabytes)}
    upload_floor["ratio_to_raw"] = round(upload_floor["MBps"] / raw["MBps"], 3)
    print(f"  {upload_floor['MBps']} MB/s, ratio_to_raw {upload_floor['ratio_to_raw']}", flush=True)
    disk = durable_write(workdir / "disk", megabytes, upload["episodes"])
    upload_floor |= {"durable_write_MBps": disk, "durable_write_ratio_to_raw": round(disk / raw["MBps"], 3)}
    print(f"bench bridge: the store's disk, the same bytes written and fsynced per episode: {disk} MB/s, "
          f"ratio_to_raw {upload_floor['durable_write_ratio_to_raw']}", flush=True)  # fmt: skip
    print(f"bench bridge: a ~100 MB signed policy to {robots} robots (bridge + policy node each) ...", flush=True)
    weights = weight_distribution(workdir / "weights", robots)
    weights["ratio_to_raw"] = round(weights["effective_MBps"] / raw["MBps"], 3)
    print(f"  all verified {weights['all_verified_s']} s ({weights['effective_MBps']} MB/s), all running "
          f"{weights['all_running_s']} s", flush=True)  # fmt: skip
    print(f"bench bridge: floor: 100 MB put to {robots} bare Zenoh receivers that write and hash ...", flush=True)
    floor_s = bare_fanout(workdir / "floor", robots, 100)
    floor = {"all_verified_s": floor_s, "ratio_to_raw": round(100 * robots / floor_s / raw["MBps"], 3)}
    print(f"  {floor_s} s, ratio_to_raw {floor['ratio_to_raw']}", flush=True)
    result = {
        "command": "sop " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "raw_zenoh_tcp_MBps": raw["MBps"],
        "episode_upload_MBps": upload["MBps"],
        "upload_ratio": round(upload["MBps"] / raw["MBps"], 3),
        "weights": weights,
        "raw": raw,
        "upload": upload,
        "upload_floor_bare_store": upload_floor,
        "weights_floor_bare_receivers": floor,
        "targets": {"upload_ratio": 0.5, "weights.ratio_to_raw": 0.5},
    }
    result["met"] = result["upload_ratio"] >= 0.5 and weights["ratio_to_raw"] >= 0.5
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(workdir, ignore_errors=True)  # gigabytes of test episodes and policies: nothing to keep
    print(f"wrote {out}; upload_ratio {result['upload_ratio']}, weights ratio_to_raw {weights['ratio_to_raw']}; "
          f"targets met: {result['met']}")  # fmt: skip
    return result
