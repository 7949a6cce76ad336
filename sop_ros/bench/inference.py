"""`sop bench inference`: the runtimes side by side, the on-robot node path against the bare runtime, hot-swaps.

1. runtimes   every runtime this host can start (torch on the CPU, on CUDA eagerly and as a CUDA graph; ONNX
              Runtime with each provider it offers, CUDA's graph mode too) runs the same exported policy on the
              same inputs: p50 / p99 of one inference step. `--runtimes-only` stops here (no ROS needed).
2. node       the robot's ingest and policy nodes in their own processes, as `sop robot` starts them; this process
              plays the robot driver: it publishes two JPEG camera frames and a joint state (one stamp) and
              times until the ActionChunk computed from them arrives. bare_p99_ms: the same runtime alone,
              measured here afterwards at the same pace (one step per control period), so the ratio is what ROS,
              synchronisation and preprocessing add. floor_p99_ms: the same hops through relays that do nothing
              (sop_ros.bench.relays), what ROS alone costs on this host.
3. hot_swap   the driver ticks at control_hz and counts ticks that got no command before the next one, while
              the policy/load service swaps between two policy files `swaps` times (immediately); activation is
              the time from the request to the reply that the new version runs.
"""

from __future__ import annotations

import contextlib
import gc
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from sop_ros.host import machine, sop_command, start_logged, stop_process

CAMERAS = ("corner", "gripperPOV")


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "n": len(values)}  # fmt: skip


def make_policies(workdir: Path, checkpoint: str | None, model_config=None) -> tuple[Path, Path, Path]:
    """A checkpoint and two ONNX exports of it with different versions (for swapping): given or fresh weights
    (of `model_config`, default ModelConfig())."""
    import torch

    from sop_ros.configs.model import ModelConfig
    from sop_ros.model.export import export_onnx
    from sop_ros.model.vla import VLAPolicy, load_checkpoint, save_checkpoint

    if checkpoint:
        model, extra = load_checkpoint(checkpoint)
    else:
        torch.manual_seed(0)  # latency does not depend on the weights: an untrained default-size model will do
        model = VLAPolicy(model_config or ModelConfig()).eval()
        extra = {"tasks": [], "cameras": list(CAMERAS)}
    paths = []
    for version in ("bench-a", "bench-b"):
        ckpt = workdir / f"{version}.pt"
        save_checkpoint(ckpt, model, **{**extra, "version": version})
        export_onnx(ckpt, workdir / f"{version}.onnx")
        paths.append(workdir / f"{version}.onnx")
    return workdir / "bench-a.pt", paths[0], paths[1]


def example_observation(metadata: dict[str, str]):
    from sop_ros.model.policy import Observation

    config = json.loads(metadata["sop_ros.model_config"])
    rng = np.random.default_rng(0)
    images = rng.random((config["cameras"], 3, config["image_size"], config["image_size"]), dtype=np.float32)
    return Observation(images, rng.standard_normal(config["proprio_dim"]).astype(np.float32), "open the drawer")


def time_runtime(runtime, iterations: int, period_s: float = 0.0) -> list[float]:
    """One inference step's latency, `iterations` times: back to back, or one per `period_s` (as a robot asks)."""
    from sop_ros.model.policy import ChunkPolicy

    policy = ChunkPolicy(runtime)
    obs = example_observation(runtime.metadata)
    for _ in range(10):  # warm-up: allocations, kernels, engines
        policy.infer(obs)
    latencies = []
    for _ in range(iterations):
        start = time.perf_counter()
        latencies.append(policy.infer(obs).latency_ms)
        time.sleep(max(0.0, start + period_s - time.perf_counter()))
    return latencies


def bench_runtimes(checkpoint: Path, onnx: Path, iterations: int, threads: int, device: str = "auto"
                   ) -> dict[str, dict]:  # fmt: skip
    """Every runtime this host can start, by its backend name (torch eager and CUDA graph; ONNX Runtime per
    provider): p50 / p99, or why it was skipped. device "cpu": the CPU ones only; "cuda": the GPU ones only.
    Each also answers one random observation, and max_abs_diff says how far its chunk is from torch/cpu's (the
    reference, where it ran)."""
    import torch

    from sop_ros.model.runtime import Unavailable, candidates, warmup_feed

    torch.set_num_threads(threads)  # both runtimes get the same cores
    results, chunks = {}, {}
    for path in (checkpoint, onnx):
        for option in candidates(path, threads=threads):
            if device != "auto" and (option.kind == "cpu") != (device == "cpu"):
                continue
            name = f"{'torch' if path == checkpoint else 'onnxruntime'}/{option.kind}"
            try:
                runtime = option.load()
            except Unavailable as err:
                results[name] = {"skipped": str(err)}
                continue
            results[runtime.backend] = percentiles(time_runtime(runtime, iterations))
            chunks[runtime.backend] = runtime.run(random_feed(warmup_feed(runtime.metadata)))
    reference = chunks.get("torch/cpu")
    if reference is not None:
        for name, chunk in chunks.items():
            results[name]["max_abs_diff"] = float(np.max(np.abs(chunk.astype(np.float64) - reference)))
    return results


def random_feed(shapes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inputs shaped and typed as `shapes`, seeded: images in [0, 1], noise and states normal, integers 0."""
    rng = np.random.default_rng(0)
    feed = {name: np.zeros_like(a) for name, a in shapes.items()}
    feed["images"] = rng.random(shapes["images"].shape, dtype=np.float32)
    for name in ("proprio", "noise"):
        feed[name] = rng.standard_normal(shapes[name].shape).astype(np.float32)
    return feed


def print_runtimes(runtimes: dict[str, dict]) -> None:
    for name, r in runtimes.items():
        if "skipped" in r:
            print(f"  {name:46s} skipped: {r['skipped']}", flush=True)
        else:
            agree = f"  max |diff| vs torch/cpu {r['max_abs_diff']:.1e}" if "max_abs_diff" in r else ""
            print(f"  {name:46s} p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms{agree}", flush=True)


def run_runtimes_only(out: Path, checkpoint: str | None, iterations: int, threads: int, device: str,
                      model_config=None) -> dict:  # fmt: skip
    """The runtimes alone (no ROS: a GPU machine without it), and which one a robot would choose."""
    workdir = Path(tempfile.mkdtemp(prefix="sop_bench_"))
    ckpt, onnx, _ = make_policies(workdir, checkpoint, model_config)
    print(f"bench inference: runtimes ({iterations} inferences each) ...", flush=True)
    runtimes = bench_runtimes(ckpt, onnx, iterations, threads, device)
    print_runtimes(runtimes)
    timed = {name: r for name, r in runtimes.items() if "p99_ms" in r and name.startswith("onnxruntime/")}
    result = {
        "command": "sop " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "policy": checkpoint or f"untrained {model_config or 'default ModelConfig'}",
        "parameters": parameters_of(ckpt),
        "inference_threads": threads,
        "runtimes": runtimes,
        # What a robot given the exported policy runs (sop_ros/model/runtime.py: the lowest p99).
        "robot_would_run": min(timed, key=lambda name: timed[name]["p99_ms"]) if timed else None,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


def parameters_of(checkpoint: Path) -> int:
    from sop_ros.model.vla import load_checkpoint, parameter_count

    return parameter_count(load_checkpoint(checkpoint)[0])


class Driver:
    """This process as the robot driver: camera frames and joint states out; chunks, commands and status in."""

    def __init__(self, namespace: str) -> None:
        import cv2
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import CompressedImage, JointState
        from std_msgs.msg import Float64MultiArray

        from sop_ros.msg import ActionChunk, PolicyStatus
        from sop_ros.robot import topics
        from sop_ros.srv import LoadPolicy

        self.node = rclpy.create_node("bench_driver", namespace=namespace)
        self._msgs = {"image": CompressedImage, "joint": JointState, "load": LoadPolicy}
        yy, xx = np.mgrid[0:96, 0:96]
        scene = np.stack([xx * 2, yy * 2, (xx + yy)], axis=-1).astype(np.uint8)  # a smooth image: JPEG-typical
        scene[30:50, 40:60] = (200, 30, 30)
        self.jpeg = cv2.imencode(".jpg", scene, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        self.image_pubs = [
            self.node.create_publisher(CompressedImage, topics.CAMERA_COMPRESSED.format(camera=c), topics.SENSOR)
            for c in CAMERAS
        ]
        self.joint_pub = self.node.create_publisher(JointState, topics.JOINT_STATES, topics.STREAM)
        self.lock = threading.Lock()
        self.chunk_times: dict[int, float] = {}  # observation stamp -> arrival of its chunk
        self.chunk_versions: set[str] = set()
        self.last_chunk_version = ""
        self.chunk_arrived = threading.Event()  # waited on, not polled: a polling loop would take a core
        self.command_times: list[float] = []
        self.status = None
        self.node.create_subscription(ActionChunk, topics.POLICY_CHUNK, self.on_chunk, topics.STREAM)
        self.node.create_subscription(Float64MultiArray, topics.POLICY_COMMAND, self.on_command, topics.STREAM)
        self.node.create_subscription(PolicyStatus, topics.POLICY_STATUS, self.on_status, topics.STREAM)
        self.load_client = self.node.create_client(LoadPolicy, topics.LOAD_POLICY)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self.executor.spin, daemon=True)
        self._spin.start()

    def on_chunk(self, msg) -> None:
        now = time.perf_counter()
        with self.lock:
            self.chunk_times[msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec] = now
            self.chunk_versions.add(msg.policy_version)
            self.last_chunk_version = msg.policy_version
        self.chunk_arrived.set()

    def on_command(self, msg) -> None:
        with self.lock:
            self.command_times.append(time.perf_counter())

    def on_status(self, msg) -> None:
        self.status = msg

    def publish_tick(self) -> int:
        """Frames then joint state, one wall-clock stamp; returns it (ns)."""
        stamp = self.node.get_clock().now()
        header_stamp = stamp.to_msg()
        for cam, pub in zip(CAMERAS, self.image_pubs, strict=True):
            msg = self._msgs["image"](format="jpeg", data=self.jpeg)
            msg.header.stamp, msg.header.frame_id = header_stamp, cam
            pub.publish(msg)
        joint = self._msgs["joint"](name=[f"joint_{i}" for i in range(9)], position=[0.1 * i for i in range(9)])
        joint.header.stamp = header_stamp
        self.joint_pub.publish(joint)
        return stamp.nanoseconds

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            subscribed = all(p.get_subscription_count() > 0 for p in [self.joint_pub, *self.image_pubs])
            if self.status is not None and self.status.version and subscribed:
                # Matched topics at both ends do not show ingest -> policy matched: a tick must come back.
                with self.lock:
                    answered = len(self.command_times)
                self.publish_tick()
                time.sleep(0.2)
                with self.lock:
                    if len(self.command_times) > answered:
                        return
            time.sleep(0.05)
        raise RuntimeError(f"the ingest and policy nodes were not ready after {timeout_s:.0f} s")

    def load(self, path: Path, timeout_s: float = 30.0):
        request = self._msgs["load"].Request(path=str(path), immediate=True)
        future = self.load_client.call_async(request)
        deadline = time.monotonic() + timeout_s
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.005)
        if not future.done():
            raise RuntimeError(f"no reply to loading {path} in {timeout_s:.0f} s")
        return future.result()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def node_config(policy: Path, image_size: int, threads: int, control_hz: float, replan_steps: int,
                wait_for_chunk: bool = False) -> dict:
    return {
        "robot": {"id": "bench", "use_sim_time": False},
        "nodes": {
            "ingest": {"cameras": list(CAMERAS), "camera_transport": "compressed",
                       "image_size": image_size},
            "policy": {"policy_path": str(policy), "control_hz": control_hz, "replan_steps": replan_steps,
                       "inference_threads": threads, "swap_at": "immediate", "act_between_episodes": True,
                       "wait_for_chunk": wait_for_chunk},
        },
    }  # fmt: skip


def bench_node(driver: Driver, iterations: int, period_s: float) -> list[float]:
    """Observation published -> its chunk received, one observation at a time, paced at the control period."""
    latencies = []
    for _ in range(iterations):
        driver.chunk_arrived.clear()
        start = time.perf_counter()
        stamp = driver.publish_tick()
        deadline = start + 2.0
        while time.perf_counter() < deadline:
            with driver.lock:
                arrived = driver.chunk_times.pop(stamp, None)
            if arrived is not None:
                latencies.append((arrived - start) * 1000)
                break
            driver.chunk_arrived.wait(max(0.0, deadline - time.perf_counter()))
            driver.chunk_arrived.clear()
        time.sleep(max(0.0, start + period_s - time.perf_counter()))
    return latencies


def bench_swaps(driver: Driver, policies: tuple[Path, Path], swaps: int, control_hz: float) -> dict:
    """Ticks at control_hz on a thread; swaps on this one; then every tick interval must hold a command."""
    period = 1.0 / control_hz
    ticks: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        next_tick = time.perf_counter()
        while not stop.is_set():
            ticks.append(time.perf_counter())
            driver.publish_tick()
            # A driver that fell behind skips the slots it missed: a burst of late ticks microseconds apart
            # would count as ticks the policy missed.
            next_tick = max(next_tick + period, time.perf_counter())
            time.sleep(max(0.0, next_tick - time.perf_counter()))

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    time.sleep(1.0)  # commands flowing before the first swap
    activations, refused = [], []
    for i in range(swaps):
        start = time.perf_counter()
        reply = driver.load(policies[(i + 1) % 2])
        if reply.accepted:
            activations.append((time.perf_counter() - start) * 1000)
        else:
            refused.append(reply.message)
        time.sleep(0.1)
    time.sleep(1.0)
    stop.set()
    ticker.join()
    with driver.lock:
        commands = np.array(driver.command_times)
    first = np.searchsorted(ticks, commands[0]) if len(commands) else len(ticks)
    # Tick k is missed when no command arrived between it and tick k+1 (the last, unfinished interval not judged).
    missed = sum(
        1 for a, b in zip(ticks[first:-1], ticks[first + 1 :], strict=False)
        if np.searchsorted(commands, a) == np.searchsorted(commands, b)
    )  # fmt: skip
    activation = percentiles(activations) if activations else {"p50_ms": None, "p99_ms": None}
    return {
        "swaps": len(activations),
        "refused": refused,
        "control_hz": control_hz,
        "ticks": int(len(ticks) - first - 1),
        "missed_ticks": int(missed),
        "activate_p50_ms": activation["p50_ms"],
        "activate_p99_ms": activation["p99_ms"],
    }


@contextlib.contextmanager
def driven(workdir: Path, commands: list[list[str]], name: str):
    """Processes started from `commands` (their output in `name`.log), and this process as their robot driver."""
    import rclpy

    procs = [start_logged(command, workdir / f"{name}.log", append=True) for command in commands]
    rclpy.init()
    driver = Driver("/bench")
    try:
        driver.wait_ready(60.0)
        yield driver
    finally:
        driver.close()
        rclpy.try_shutdown()
        for proc in procs:
            stop_process(proc, signal.SIGTERM, timeout_s=30.0)


def robot_nodes(workdir: Path, config: dict, name: str):
    """The ingest and policy nodes as `sop robot` starts them, driven by this process."""
    import yaml

    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return driven(workdir, [sop_command("robot", "--config", str(path))], name)


def relay_nodes(workdir: Path, image_size: int):
    """The node path's floor (sop_ros.bench.relays): the same topics and hops with nothing behind them."""
    relay = [sys.executable, "-m", "sop_ros.bench.relays"]
    sizes = ["--cameras", str(len(CAMERAS)), "--image-size", str(image_size), "--ros-args", "-r", "__ns:=/bench"]
    return driven(workdir, [[*relay, "ingest", *sizes], [*relay, "policy", *sizes]], "floor")


def run(out: Path, checkpoint: str | None, iterations: int, swaps: int, threads: int, control_hz: float,
        model_config=None, device: str = "auto") -> dict:  # fmt: skip
    from sop_ros.model.runtime import OnnxRuntime
    from sop_ros.model.vla import load_checkpoint

    workdir = Path(tempfile.mkdtemp(prefix="sop_bench_"))
    ckpt, onnx_a, onnx_b = make_policies(workdir, checkpoint, model_config)
    # This process is the robot driver and the stopwatch: what torch and the exports left must not make its
    # garbage collections long pauses (as the robot's own nodes, sop_ros.robot.spin).
    gc.collect()
    gc.freeze()
    image_size = load_checkpoint(ckpt)[0].config.image_size  # the ingest resizes frames to the policy's input
    print(f"bench inference: runtimes ({iterations} inferences each) ...", flush=True)
    runtimes = bench_runtimes(ckpt, onnx_a, iterations, threads, device)
    print_runtimes(runtimes)

    print(f"bench inference: node path ({iterations} observations, each answered by a fresh chunk) ...", flush=True)
    config = node_config(onnx_a, image_size, threads, control_hz, replan_steps=1)
    with robot_nodes(workdir, config, "node") as driver:
        bench_node(driver, 20, 1.0 / control_hz)  # warm-up
        node = bench_node(driver, iterations, 1.0 / control_hz)
        backend = driver.status.backend
    # The bare runtime at the node path's pace: one step per control period leaves caches and the core colder
    # than back-to-back steps do (measured here: p99 ~3 ms higher for this model), and that is not ROS's cost.
    bare = percentiles(time_runtime(OnnxRuntime(onnx_a, threads=threads), iterations, 1.0 / control_hz))
    n = {**percentiles(node), "bare_p50_ms": bare["p50_ms"], "bare_p99_ms": bare["p99_ms"],
         "lost": iterations - len(node), "backend": backend}  # fmt: skip
    n["overhead_ratio_p99"] = round(n["p99_ms"] / n["bare_p99_ms"], 3)
    print(f"  node p50 {n['p50_ms']:.2f} ms p99 {n['p99_ms']:.2f} ms; bare p99 {n['bare_p99_ms']:.2f} ms; "
          f"ratio {n['overhead_ratio_p99']:.3f}", flush=True)  # fmt: skip
    # The same hops with nothing behind them: the part of the overhead that is ROS's on this host.
    with relay_nodes(workdir, image_size) as driver:
        bench_node(driver, 20, 1.0 / control_hz)
        floor = percentiles(bench_node(driver, iterations, 1.0 / control_hz))
    n["floor_p50_ms"], n["floor_p99_ms"] = floor["p50_ms"], floor["p99_ms"]
    print(f"  floor (relays, no work) p50 {floor['p50_ms']:.2f} ms p99 {floor['p99_ms']:.2f} ms", flush=True)

    print(f"bench inference: {swaps} hot-swaps at {control_hz:g} Hz ...", flush=True)
    config = node_config(onnx_a, image_size, threads, control_hz, replan_steps=8)
    with robot_nodes(workdir, config, "swap") as driver:
        hot_swap = bench_swaps(driver, (onnx_a, onnx_b), swaps, control_hz)
    print(f"  {hot_swap['swaps']} swaps, {hot_swap['missed_ticks']} missed of {hot_swap['ticks']} ticks, "
          f"activation p99 {hot_swap['activate_p99_ms']} ms", flush=True)  # fmt: skip
    result = {
        "command": "sop " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "policy": checkpoint or f"untrained {model_config or 'default ModelConfig'}",
        "inference_threads": threads,
        "runtimes": runtimes,
        "node": n,
        "hot_swap": hot_swap,
        "targets": {"overhead_ratio_p99": 1.25, "missed_ticks": 0, "swaps_min": 100, "activate_p99_ms": 1000},
        "met": n["overhead_ratio_p99"] <= 1.25
        and hot_swap["missed_ticks"] == 0
        and hot_swap["swaps"] >= 100
        and (hot_swap["activate_p99_ms"] or 1e9) <= 1000,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}; targets met: {result['met']}")
    return result
