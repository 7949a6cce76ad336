"""Hot-swaps while the policy drives: every control tick is still answered, and both versions run."""

import threading
import time

import torch

from sop_ros.configs.model import ModelConfig
from sop_ros.model.vla import VLAPolicy, save_checkpoint

TINY = ModelConfig(width=32, depth=1, head_depth=1, heads=2, cnn_channels=(8, 8, 8, 8), chunk=8, flow_steps=2)


def test_swaps_under_load_leave_no_tick_unanswered(tmp_path):
    from sop_ros.bench.inference import make_policies, node_config, robot_nodes

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "tiny.pt", VLAPolicy(TINY).eval(), version="tiny", cameras=["corner", "gripperPOV"])
    _, first, second = make_policies(tmp_path, str(tmp_path / "tiny.pt"))
    # Each tick that needs a new chunk waits for it, so every tick must be answered however slow the host is.
    config = node_config(first, threads=1, control_hz=30.0, replan_steps=4, wait_for_chunk=True)
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
