"""What an episode store holds against what robots produced: lost, duplicated, damaged, and where the missing are.

Read from the store's files and its index as they are (read-only: opening an EpisodeStore would first index files
that a crash left unindexed, and so hide them). Used by the fault tests (`sop chaos bridge`, `sop chaos soak`).
"""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from pathlib import Path

from sop_ros.checksums import file_sha256


def audit(produced: dict[str, dict[str, str]], store: Path, outbox_root: Path, robot_ids: list[str]) -> dict:
    """What the store holds against what was produced (robot -> episode id -> sha256, "" where only the
    episode's presence and robot are checked); see the module's doc."""
    expected = {eid: (robot, sha) for robot, episodes in produced.items() for eid, sha in episodes.items()}
    rows = index_rows(store / "index.sqlite")
    rows_per_id = Counter(row[0] for row in rows)
    files = defaultdict(list)  # episode id -> its files under episodes/ (one per robot directory it is in)
    for path in sorted((store / "episodes").glob("*/*.mcap")):
        files[path.stem].append(path)
    parts = sorted((store / "incoming").glob("*/*.part"))
    stored = set(rows_per_id)
    duplicated = sorted(eid for eid in stored | set(files) if rows_per_id[eid] > 1 or len(files[eid]) > 1
                        or eid in stored and any(p.stem == eid for p in parts))  # fmt: skip
    mismatched = []
    for eid, robot, sha256, path in rows:
        if eid not in expected:
            continue
        on_disk = store / path
        if not expected[eid][1]:
            expected[eid] = (expected[eid][0], sha256)
        actual = file_sha256(on_disk) if on_disk.is_file() else None
        if (robot, sha256, actual) != (expected[eid][0], expected[eid][1], expected[eid][1]):
            mismatched.append({"episode_id": eid, "robot": robot, "produced": expected[eid][1], "indexed": sha256,
                               "on_disk": actual})  # fmt: skip
    lost = sorted(set(expected) - stored)
    in_outbox = {r: sorted(p.stem for p in (outbox_root / r).glob("*.mcap")) for r in robot_ids}
    rejected = {r: sorted(p.stem for p in (outbox_root / r / "rejected").glob("*.mcap")) for r in robot_ids}
    per_robot = {
        robot: {
            "produced": len(produced[robot]),
            "stored": sum(eid in stored for eid in produced[robot]),
            "lost": sum(eid not in stored for eid in produced[robot]),
            "left_in_outbox": len(in_outbox[robot]),
            "rejected": len(rejected[robot]),
        }
        for robot in robot_ids
    }
    return {
        "stored": len(stored & set(expected)),
        "lost_ids": lost,
        "lost_where": {eid: where(eid, expected[eid][0], in_outbox, rejected, files, parts) for eid in lost},
        "duplicated_ids": duplicated,
        "mismatched": mismatched,
        "left_in_outbox": {r: ids for r, ids in in_outbox.items() if ids},
        "rejected": {r: ids for r, ids in rejected.items() if ids},
        "unindexed_files": unindexed(store, rows),
        "leftover_parts": [str(p.relative_to(store)) for p in parts],
        "not_produced": sorted(stored - set(expected)),
        "index_rows": len(rows),
        "files_on_disk": sum(len(paths) for paths in files.values()),
        "per_robot": per_robot,
    }


def where(eid: str, robot: str, in_outbox: dict, rejected: dict, files: dict, parts: list[Path]) -> str:
    """Where a lost episode is, if anywhere."""
    places = {
        "in its outbox": eid in in_outbox[robot],
        "in rejected/": eid in rejected[robot],
        "in episodes/ but not indexed": eid in files,
        "a .part in incoming/": any(p.stem == eid for p in parts),
    }
    return ", ".join(place for place, here in places.items() if here) or "nowhere"


def unindexed(store: Path, rows: list[tuple[str, str, str, str]]) -> list[str]:
    """Files under episodes/ without an index row (as EpisodeStore.reconcile finds them), relative to the store."""
    indexed = {row[3] for row in rows}
    files = (str(p.relative_to(store)) for p in (store / "episodes").glob("*/*.mcap"))
    return sorted(f for f in files if f not in indexed)


def index_rows(db: Path) -> list[tuple[str, str, str, str]]:
    """(episode id, robot id, sha256, path) of every row of the store's index, read only."""
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return con.execute("SELECT episode_id, robot_id, sha256, path FROM episodes").fetchall()
    finally:
        con.close()
