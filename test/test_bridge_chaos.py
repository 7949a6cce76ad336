"""`sop chaos bridge`, scaled down: bridges and the ingest SIGKILLed while episodes go up, none lost or doubled;
and the comparison itself, on a store that lost, doubled and damaged episodes on purpose."""

import json
import random
import shutil

import pytest

from sop_ros.bench.chaos_bridge import run, write_episode
from sop_ros.bridge.protocol import Piece, episode_key
from sop_ros.checksums import file_sha256
from sop_ros.cli import build_parser, cmd_chaos_bridge
from sop_ros.cloud.episode_ingest import EpisodeIngest
from sop_ros.cloud.episode_store import EpisodeStore
from sop_ros.cloud.store_audit import audit
from sop_ros.configs.bridge import EpisodeIngestConfig

TIER = "unit"  # what the tests need: conftest.TIERS


@pytest.mark.zenoh
def test_no_episode_is_lost_or_stored_twice_when_bridges_and_the_ingest_are_killed(tmp_path):
    out = tmp_path / "bridge.json"
    result = run(out, robots=2, episodes=16, kills=4, seed=0, out_dir=tmp_path / "runs")
    assert json.loads(out.read_text())["passed"] is True
    assert result["errors"] == [] and result["passed"]
    assert (result["lost"], result["duplicated"], result["sha256_mismatches"]) == (0, 0, 0)
    assert result["episodes"]["produced"] == result["episodes"]["stored"] == result["index_rows"] == 16
    kills = result["kills"]
    assert kills["total"] == 4 and kills["bridge"] >= 1 and kills["ingest"] >= 1
    assert result["processes"]["starts"]["ingest"] == 1 + kills["ingest"]
    assert set(result["processes"]["stop_exit_codes"].values()) == {0}  # all running again, stopped cleanly
    assert {r: c["stored"] for r, c in result["per_robot"].items()} == {"robot_0": 8, "robot_1": 8}
    assert result["leftover_parts"] == [] and result["unindexed_files"] == []


def test_the_comparison_names_lost_doubled_and_damaged_episodes(tmp_path):
    outbox = tmp_path / "outbox" / "robot_0"
    rng = random.Random(0)
    paths = [write_episode(outbox, "robot_0", f"robot_0-{n}", rng) for n in range(4)]
    produced = {"robot_0": {p.stem: file_sha256(p) for p in paths}, "robot_1": {}}
    store = EpisodeStore(tmp_path / "store")
    ingest = EpisodeIngest(store, EpisodeIngestConfig())
    for path in paths[:3]:  # robot_0-3 never goes up: it stays in the outbox
        data = path.read_bytes()
        assert ingest.handle(episode_key("robot_0", path.stem), Piece(len(data), file_sha256(path), 0).encode(),
                             data).status == "stored"  # fmt: skip
        path.unlink()
    store.close()
    root = tmp_path / "store"
    (root / "episodes" / "robot_1").mkdir()
    shutil.copy(root / "episodes/robot_0/robot_0-0.mcap", root / "episodes/robot_1/robot_0-0.mcap")  # a 2nd file
    (root / "incoming" / "robot_0").mkdir(exist_ok=True)
    (root / "incoming/robot_0/robot_0-2.part").write_bytes(b"x")  # a stray upload of a stored episode
    damaged = root / "episodes/robot_0/robot_0-1.mcap"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"!")

    found = audit(produced, root, tmp_path / "outbox", ["robot_0", "robot_1"])
    assert found["lost_ids"] == ["robot_0-3"] and found["lost_where"] == {"robot_0-3": "in its outbox"}
    assert found["duplicated_ids"] == ["robot_0-0", "robot_0-2"]
    assert [m["episode_id"] for m in found["mismatched"]] == ["robot_0-1"]
    assert found["mismatched"][0]["indexed"] == produced["robot_0"]["robot_0-1"] != found["mismatched"][0]["on_disk"]
    assert (found["stored"], found["index_rows"], found["files_on_disk"]) == (3, 3, 4)
    assert found["unindexed_files"] == ["episodes/robot_1/robot_0-0.mcap"]
    assert found["per_robot"]["robot_0"] == {"produced": 4, "stored": 3, "lost": 1, "left_in_outbox": 1,
                                             "rejected": 0}  # fmt: skip


def test_sop_chaos_bridge_defaults_to_the_full_run():
    args = build_parser().parse_args(["chaos", "bridge", "--json", "results/chaos/bridge.json"])
    assert args.func is cmd_chaos_bridge
    assert (args.robots, args.episodes, args.kills, args.seed, args.out) == (4, 200, 20, 0, "runs/chaos")
