"""Hot-swaps while the policy drives: every control tick is still answered, and both versions run."""

import threading
import time

import torch
from conftest import wait_for

from sop_ros.configs.model import ModelConfig
from sop_ros.model.vla import VLAPolicy, save_checkpoint

TIER = "ros"  # what the tests need: conftest.TIERS

TINY = ModelConfig(width=32, depth=1, head_depth=1, heads=2, cnn_channels=(8, 8, 8, 8), chunk=8, flow_steps=2)


def test_swaps_under_load_leave_no_tick_unanswered(tmp_path):
    from sop_ros.bench.inference import make_policies, node_config, robot_nodes

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "tiny.pt", VLAPolicy(TINY).eval(), version="tiny", cameras=["corner", "gripperPOV"])
    _, first, second = make_policies(tmp_path, str(tmp_path / "tiny.pt"))
    # Each tick that needs a new chunk waits for it, so every tick must be answered however slow the host is.
    config = node_config(first, TINY.image_size, threads=1, control_hz=30.0, replan_steps=4, wait_for_chunk=True)
    with robot_nodes(tmp_path, config, "swap") as driver:
        replies, ran = [], []

        def swap() -> None:
            for i in range(6):
                replies.append(driver.load([second, first][i % 2]))
                deadline = time.monotonic() + 30.0  # the swapped-in version computes a chunk before the next swap
                while driver.last_chunk_version != replies[-1].running_version and time.monotonic() < deadline:
                    time.sleep(0.01)
                ran.append(driver.last_chunk_version)

        swapper = threading.Thread(target=swap)
        swapper.start()
        ticks = answered = 0
        while swapper.is_alive() or ticks < 60:
            with driver.lock:
                before = len(driver.command_times)
            driver.publish_tick()
            ticks += 1
            deadline = time.monotonic() + 10.0  # generous: only whether it comes is asserted, not how soon
            while time.monotonic() < deadline:
                with driver.lock:
                    if len(driver.command_times) > before:
                        answered += 1
                        break
                time.sleep(0.002)
            assert ticks < 2000, "the swaps never finished"
        swapper.join()
        with driver.lock:
            versions = set(driver.chunk_versions)
    assert [r.accepted for r in replies] == [True] * 6, [r.message for r in replies]
    assert [r.running_version for r in replies] == ["bench-b", "bench-a"] * 3
    assert answered == ticks
    assert ran == ["bench-b", "bench-a"] * 3 and versions == {"bench-a", "bench-b"}


def test_an_episode_runs_the_policy_its_start_names(tmp_path):
    """A paced simulator's episodes name their policy: a newer one loaded meanwhile waits for its episode, an
    older one still warm is swapped back in, and one not loaded yet is waited for with nothing commanded."""
    from sop_ros.bench.inference import make_policies, node_config, robot_nodes
    from sop_ros.model.export import export_onnx
    from sop_ros.msg import EpisodeEvent
    from sop_ros.robot import topics
    from sop_ros.srv import LoadPolicy

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "tiny.pt", VLAPolicy(TINY).eval(), version="tiny", cameras=["corner", "gripperPOV"])
    _, first, second = make_policies(tmp_path, str(tmp_path / "tiny.pt"))
    save_checkpoint(tmp_path / "c.pt", VLAPolicy(TINY).eval(), version="bench-c", cameras=["corner", "gripperPOV"])
    third = tmp_path / "bench-c.onnx"
    export_onnx(tmp_path / "c.pt", third)
    config = node_config(first, TINY.image_size, threads=1, control_hz=30.0, replan_steps=4, wait_for_chunk=True)
    config["nodes"]["policy"] |= {"swap_at": "episode_boundary"}
    with robot_nodes(tmp_path, config, "scheduled") as driver:
        events = driver.node.create_publisher(EpisodeEvent, topics.EPISODE_EVENTS, topics.EVENTS)

        def start(version: str, n: int) -> None:
            events.publish(EpisodeEvent(event=EpisodeEvent.EVENT_START, episode_id=f"e{n}", instruction="reach",
                                        policy_version=version))  # fmt: skip

        def load(path) -> LoadPolicy.Response:
            future = driver.load_client.call_async(LoadPolicy.Request(path=str(path)))
            deadline = time.monotonic() + 60.0
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.01)
            return future.result()

        def answer(timeout_s: float = 10.0) -> str | None:
            """Tick until one is answered; the version of the chunk that answered it (None: no answer)."""
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                with driver.lock:
                    before = len(driver.command_times)
                driver.publish_tick()
                tick_deadline = time.monotonic() + 0.5
                while time.monotonic() < tick_deadline:
                    with driver.lock:
                        if len(driver.command_times) > before:
                            return driver.last_chunk_version
                    time.sleep(0.005)
            return None

        def started(running: str = "", awaited: str = "") -> None:
            """Wait until the policy node took the START (events and ticks travel on different topics)."""
            wait_for(lambda: driver.status is not None and (driver.status.version, driver.status.awaited_version)
                     == (running, awaited), 30, what=f"policy status running {running!r}, awaiting {awaited!r}")

        # The first START names the policy running since the node started: the status alone cannot show the node
        # took it, and a load that overtook it would find no episode and swap at once. So an episode scheduled to
        # run a version never loaded comes first: awaited, then cleared by that START.
        start("bench-never-loaded", -1)
        started(running="bench-a", awaited="bench-never-loaded")
        ran = []
        for n, (version, path) in enumerate([("bench-a", None), ("bench-b", second), ("bench-a", None)]):
            reply = load(path) if path else None
            if reply is not None:  # loaded while an episode runs another: kept for the episode scheduled to run it
                assert reply.accepted and reply.running_version == "bench-a", reply.message
                assert answer() == "bench-a"
            start(version, n)
            started(running=version)
            ran.append(answer())
        assert ran == ["bench-a", "bench-b", "bench-a"]

        start("bench-c", 3)
        started(running="bench-a", awaited="bench-c")
        assert answer(timeout_s=2.0) is None  # not loaded: the episode waits for it
        assert driver.status.awaited_version == "bench-c"
        reply = load(third)
        assert reply.accepted and reply.running_version == "bench-c", reply.message
        assert answer() == "bench-c"
