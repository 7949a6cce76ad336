"""The cloud's Zenoh access control: which certified peer may do what, by its certificate's common name.

Zenoh applies it on the links of the session that has it (the cloud's), to messages from (`ingress`) and to
(`egress`) each remote peer; the cloud's own publications, queries and replies inside its session are not
filtered. Everything not allowed below is denied, so a robot with a valid fleet certificate still cannot publish
or serve a policy, read other robots' uploads, or upload or report as another robot.

Directions, seen from the cloud: a robot's query, subscription or put comes in (ingress); the cloud's replies,
puts and its own queryable/subscriber declarations (which tell a peer where to route its messages) go out (egress).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from sop_ros.bridge.certificates import FLEET_ID
from sop_ros.bridge.protocol import EPISODES, FLEET_ROBOTS, FLEET_TABLE, POLICIES

ALL_MESSAGES = ("put", "delete", "declare_subscriber", "query", "declare_queryable", "reply", "liveliness_token",
                "declare_liveliness_subscriber", "liveliness_query")  # fmt: skip

RECEIVE_POLICIES = ("put", "delete", "reply", "declare_queryable")  # out to robots under sop/policies/**


def _rule(rule_id: str, flow: str, messages: Sequence[str], key_exprs: Sequence[str]) -> dict:
    return {"id": rule_id, "permission": "allow", "flows": [flow], "messages": list(messages),
            "key_exprs": list(key_exprs)}  # fmt: skip


def access_control(robots: Sequence[str], cloud: str = "cloud", operators: Sequence[str] = ("operator",)) -> dict:
    """Zenoh's `access_control` section for the cloud session: default deny, subjects by certificate common name.

    - robots: upload episodes under sop/episodes/<own id>/** (query, and the replies back), receive and fetch
      policies under sop/policies/** (subscribe, put in, query, replies back), report on
      sop/fleet/robots/<own id> (put). Nothing else: no put or queryable on sop/policies/**, no subscriber or
      queryable anywhere under sop/episodes/**.
    - the cloud's own other sessions (certificate `cloud`): everything.
    - operators: query sop/fleet/table (read only).
    """
    for name in (*robots, cloud, *operators):
        if not FLEET_ID.fullmatch(name):
            raise ValueError(f"id {name!r}: must be letters, digits and '_' only")
    names = [*robots, cloud, *operators]
    if len(set(names)) != len(names):
        raise ValueError(f"robot, cloud and operator ids must be distinct: {names}")
    rules = [
        _rule("cloud: everything in", "ingress", ALL_MESSAGES, ["**"]),
        _rule("cloud: everything out", "egress", ALL_MESSAGES, ["**"]),
    ]
    subjects = [{"id": f"cloud {cloud}", "cert_common_names": [cloud]}]
    policies = [{"id": "cloud", "rules": ["cloud: everything in", "cloud: everything out"],
                 "subjects": [f"cloud {cloud}"]}]  # fmt: skip
    if robots:
        # The cloud's declarations tell a robot where its uploads and reports go.
        services = [f"{EPISODES}/**", f"{FLEET_ROBOTS}/**"]
        rules += [
            _rule("robots: see the services", "egress", ["declare_queryable", "declare_subscriber"], services),
            _rule("robots: ask for policies", "ingress", ["declare_subscriber", "query"], [f"{POLICIES}/**"]),
            _rule("robots: receive policies", "egress", RECEIVE_POLICIES, [f"{POLICIES}/**"]),
        ]
        shared = ["robots: see the services", "robots: ask for policies", "robots: receive policies"]
        for robot in robots:
            upload, own = f"{EPISODES}/{robot}/**", f"{FLEET_ROBOTS}/{robot}"
            rules += [
                _rule(f"{robot}: upload and report", "ingress", ["query", "put"], [upload, own]),
                _rule(f"{robot}: upload replies", "egress", ["reply"], [upload]),
            ]
            subjects.append({"id": f"robot {robot}", "cert_common_names": [robot]})
            own_rules = [*shared, f"{robot}: upload and report", f"{robot}: upload replies"]
            policies.append({"id": f"robot {robot}", "subjects": [f"robot {robot}"], "rules": own_rules})
    if operators:
        rules += [
            _rule("operators: read the fleet table", "ingress", ["query"], [FLEET_TABLE]),
            _rule("operators: fleet table replies", "egress", ["reply", "declare_queryable"], [FLEET_TABLE]),
        ]
        subjects += [{"id": f"operator {name}", "cert_common_names": [name]} for name in operators]
        policies.append({"id": "operators", "subjects": [f"operator {name}" for name in operators],
                         "rules": ["operators: read the fleet table", "operators: fleet table replies"]})  # fmt: skip
    return {"enabled": True, "default_permission": "deny", "rules": rules, "subjects": subjects,
            "policies": policies}  # fmt: skip


def write_access_control(path: Path, robots: Sequence[str], cloud: str = "cloud",
                         operators: Sequence[str] = ("operator",)) -> Path:  # fmt: skip
    """Write `access_control(...)` as JSON (ZenohConfig.access_control reads it back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(access_control(robots, cloud, operators), indent=2) + "\n")
    return path
