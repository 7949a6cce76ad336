"""Robots <-> cloud over mutual TLS with the cloud's access control: real Zenoh sessions on tls/127.0.0.1.

Every negative (a message that must not arrive) is checked after a positive control on the same link: messages
on one link arrive in order, so once a later legitimate message arrived, the blocked one would have too.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import threading
import time

import pytest
import zenoh
from conftest import wait_for
from cryptography import x509

from sop_ros.bridge.certificates import certificate_common_name, make_fleet_certificates
from sop_ros.bridge.protocol import FLEET_ROBOTS, FLEET_TABLE, POLICY_ANNOUNCE, POLICY_LATEST, episode_key
from sop_ros.bridge.security import access_control, write_access_control
from sop_ros.bridge.zenoh_session import open_session, session_config
from sop_ros.configs import ConfigError, from_dict
from sop_ros.configs.bridge import TlsConfig, ZenohConfig

TIER = "zenoh"  # what the tests need: conftest.TIERS

ROBOTS = ["robot_0", "robot_1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fleet")
    make_fleet_certificates(directory, [*ROBOTS, "operator"])
    return directory


def tls(directory, name: str) -> TlsConfig:
    return TlsConfig(str(directory / "ca.pem"), str(directory / f"{name}.pem"), str(directory / f"{name}.key"))


class Cloud:
    """The cloud's session with the fleet's access control, and what it received."""

    def __init__(self, fleet, tmp_path) -> None:
        self.endpoint = f"tls/127.0.0.1:{free_port()}"
        acl = write_access_control(tmp_path / "access_control.json", ROBOTS)
        self.session = open_session(ZenohConfig(listen=(self.endpoint,), tls=tls(fleet, "cloud"),
                                                access_control=str(acl)))  # fmt: skip
        self.received: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.session.declare_subscriber(POLICY_ANNOUNCE, self._on_sample)
        self.session.declare_subscriber(f"{FLEET_ROBOTS}/*", self._on_sample)
        self.session.declare_queryable("sop/episodes/**", lambda q: q.reply(q.key_expr, b"stored"))
        self.session.declare_queryable(FLEET_TABLE, lambda q: q.reply(FLEET_TABLE, b"table"))

    def _on_sample(self, sample: zenoh.Sample) -> None:
        with self._lock:
            self.received.append((str(sample.key_expr), sample.payload.to_bytes()))

    def got(self, key: str, payload: bytes) -> bool:
        with self._lock:
            return (key, payload) in self.received

    def keys(self) -> set[str]:
        with self._lock:
            return {key for key, _ in self.received}


@pytest.fixture
def cloud(fleet, tmp_path):
    cloud = Cloud(fleet, tmp_path)
    yield cloud
    cloud.session.close()


@pytest.fixture
def connect(fleet, cloud):
    """Open a peer session to the cloud with `name`'s fleet certificate; closed at the end of the test."""
    sessions = []

    def connect(name: str) -> zenoh.Session:
        sessions.append(open_session(ZenohConfig(connect=(cloud.endpoint,), tls=tls(fleet, name))))
        return sessions[-1]

    yield connect
    for session in sessions:
        session.close()


def replies(session: zenoh.Session, key: str, timeout: float = 2.0) -> list[bytes]:
    return [r.ok.payload.to_bytes() for r in session.get(key, timeout=timeout) if r.ok is not None]


def report_arrives(robot: zenoh.Session, cloud: Cloud, robot_id: str, marker: bytes) -> None:
    """Put a report until the cloud has it (the first ones may go out before its subscriber is known)."""
    key = f"{FLEET_ROBOTS}/{robot_id}"
    deadline = time.monotonic() + 10.0
    while not cloud.got(key, marker):
        assert time.monotonic() < deadline, f"the cloud never received {robot_id}'s report: the link does not work"
        robot.put(key, marker)
        time.sleep(0.05)


@pytest.mark.unit
def test_fleet_certificates_name_their_holder_and_keep_keys_private(tmp_path):
    paths = make_fleet_certificates(tmp_path / "keys", ["robot_0"], hosts=["cloud.example.org", "10.0.0.5"])
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [
        "ca.key", "ca.pem", "cloud.key", "cloud.pem", "robot_0.key", "robot_0.pem"]  # fmt: skip
    for name in ("ca", "cloud", "robot_0"):
        assert stat.S_IMODE(os.stat(paths[f"{name}.key"]).st_mode) == 0o600
    assert certificate_common_name(paths["robot_0"]) == "robot_0"
    assert certificate_common_name(paths["cloud"]) == "cloud"
    cloud = x509.load_pem_x509_certificate(paths["cloud"].read_bytes())
    sans = cloud.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(v) for v in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.0.0.5"}
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "cloud.example.org"}
    ca = x509.load_pem_x509_certificate(paths["ca"].read_bytes())
    cloud.verify_directly_issued_by(ca)

    before = paths["robot_0.key"].read_bytes()
    with pytest.raises(ValueError, match=r"ca\.pem.*already exist.*force=True"):
        make_fleet_certificates(tmp_path / "keys", ["robot_0"])
    assert paths["robot_0.key"].read_bytes() == before
    make_fleet_certificates(tmp_path / "keys", ["robot_0"], force=True)
    assert paths["robot_0.key"].read_bytes() != before
    assert stat.S_IMODE(os.stat(paths["robot_0.key"]).st_mode) == 0o600
    with pytest.raises(ValueError, match=r"'robot-1'.*letters, digits and '_' only"):
        make_fleet_certificates(tmp_path / "other", ["robot_0", "robot-1"])
    with pytest.raises(ValueError, match=r"'\.\./x'"):
        make_fleet_certificates(tmp_path / "other", ["../x"])
    assert not (tmp_path / "other").exists()


def test_a_certified_robot_uploads_and_receives_policies(cloud, connect):
    robot = connect("robot_0")
    wait_for(lambda: replies(robot, episode_key("robot_0", "ep_1"), timeout=1.0) == [b"stored"], 10.0,
             what="robot_0's upload query to be answered over mutual TLS")  # fmt: skip

    received = []
    robot.declare_subscriber(POLICY_ANNOUNCE, lambda s: received.append(s.payload.to_bytes()))
    report_arrives(robot, cloud, "robot_0", b"after subscribing")  # the subscription went up before it
    cloud.session.put(POLICY_ANNOUNCE, b"version 7")
    wait_for(lambda: received == [b"version 7"], 10.0, what="the cloud's announcement at robot_0")


def test_peers_without_a_fleet_certificate_cannot_connect(fleet, cloud, connect, tmp_path):
    robot = connect("robot_1")
    wait_for(lambda: replies(robot, episode_key("robot_1", "ep_1"), timeout=1.0) == [b"stored"], 10.0,
             what="a certified robot's query (the cloud accepts connections)")  # fmt: skip
    peers = len(list(cloud.session.info.peers_zid()))
    make_fleet_certificates(tmp_path / "other", ["robot_0"])  # the same name, another CA
    # Trusts the fleet's CA (so it would accept the cloud) but has no certificate of its own.
    no_cert = session_config(ZenohConfig(connect=(cloud.endpoint.replace("tls/", "tcp/"),)))
    no_cert.insert_json5("connect/endpoints", json.dumps([cloud.endpoint]))
    no_cert.insert_json5("transport/link/tls/root_ca_certificate", json.dumps(str(fleet / "ca.pem")))
    other_ca = ZenohConfig(connect=(cloud.endpoint,), tls=tls(tmp_path / "other", "robot_0"))
    outsiders = [zenoh.open(no_cert), open_session(other_ca)]
    try:
        for outsider in outsiders:
            outsider.put(POLICY_ANNOUNCE, b"forged")
            assert replies(outsider, "sop/episodes/**", timeout=1.0) == []
        time.sleep(1.0)  # a few connection attempts (retried): none gets through
        assert all(not list(o.info.peers_zid()) for o in outsiders)
        assert len(list(cloud.session.info.peers_zid())) == peers
        assert POLICY_ANNOUNCE not in cloud.keys()
    finally:
        for outsider in outsiders:
            outsider.close()


def test_a_certified_robot_cannot_publish_or_serve_policies_or_act_as_another_robot(cloud, connect):
    robot = connect("robot_0")
    report_arrives(robot, cloud, "robot_0", b"hello")  # positive control: this link works
    robot.put(POLICY_ANNOUNCE, b"forged policy")
    robot.put(f"{FLEET_ROBOTS}/robot_1", b"forged report")
    robot.declare_queryable(POLICY_LATEST, lambda q: q.reply(POLICY_LATEST, b"forged latest"))
    episodes = []
    robot.declare_subscriber("sop/episodes/**", lambda s: episodes.append(s.payload.to_bytes()))
    report_arrives(robot, cloud, "robot_0", b"after the forgeries")  # sent after them on the same link
    assert POLICY_ANNOUNCE not in cloud.keys()
    assert f"{FLEET_ROBOTS}/robot_1" not in cloud.keys()
    assert replies(cloud.session, POLICY_LATEST) == []  # the robot's queryable is not known to the cloud
    assert replies(robot, episode_key("robot_1", "ep_1")) == []  # uploads only under its own id
    assert replies(robot, episode_key("robot_0", "ep_1")) == [b"stored"]
    assert replies(robot, FLEET_TABLE) == []  # the fleet table is the operator's

    cloud.session.put(episode_key("robot_0", "ep_1"), b"an episode")  # the robot's subscriber is not known either
    received = []
    robot.declare_subscriber(POLICY_ANNOUNCE, lambda s: received.append(s.payload.to_bytes()))
    report_arrives(robot, cloud, "robot_0", b"subscribed")
    cloud.session.put(episode_key("robot_0", "ep_2"), b"an episode")
    cloud.session.put(POLICY_ANNOUNCE, b"version 8")  # after the episode put: it arriving proves the other did not
    wait_for(lambda: received == [b"version 8"], 10.0, what="the announcement at robot_0")
    assert episodes == []


def test_the_operator_reads_the_fleet_table(cloud, connect):
    operator = connect("operator")
    wait_for(lambda: replies(operator, FLEET_TABLE, timeout=1.0) == [b"table"], 10.0, what="the fleet table")
    operator.put(POLICY_ANNOUNCE, b"forged")
    assert replies(operator, episode_key("robot_0", "ep_1")) == []
    assert replies(operator, FLEET_TABLE) == [b"table"]  # after the put, on the same link
    assert POLICY_ANNOUNCE not in cloud.keys()


@pytest.mark.unit
def test_the_access_control_names_each_robot_and_refuses_bad_ids():
    acl = access_control(["robot_0"])
    assert acl["default_permission"] == "deny" and acl["enabled"] is True
    subjects = {s["id"]: s["cert_common_names"] for s in acl["subjects"]}
    assert subjects == {"cloud cloud": ["cloud"], "robot robot_0": ["robot_0"], "operator operator": ["operator"]}
    keys = {k for rule in acl["rules"] if rule["id"].startswith("robot_0") for k in rule["key_exprs"]}
    assert keys == {"sop/episodes/robot_0/**", f"{FLEET_ROBOTS}/robot_0"}
    with pytest.raises(ValueError, match=r"'robot/\*\*'"):
        access_control(["robot/**"])
    with pytest.raises(ValueError, match="distinct"):
        access_control(["cloud"])


def test_tls_config_errors_name_the_field(fleet, tmp_path):
    endpoint = "tls/127.0.0.1:7447"
    with pytest.raises(ConfigError, match=r"zenoh\.tls\.certificate='': set root_ca, certificate and private_key"):
        from_dict(ZenohConfig, {"connect": [endpoint], "tls": {"root_ca": "ca.pem"}}, "zenoh")
    full = {"root_ca": "ca.pem", "certificate": "robot_0.pem", "private_key": "robot_0.key"}
    with pytest.raises(ConfigError, match=r"zenoh\.connect\[0\]='tcp/127.0.0.1:7447': must be a tls/ endpoint"):
        from_dict(ZenohConfig, {"connect": ["tcp/127.0.0.1:7447"], "tls": full}, "zenoh")
    with pytest.raises(ConfigError, match=r"listen\[0\]='tls/127.0.0.1:7447': a tls/ endpoint needs tls\.root_ca"):
        ZenohConfig(listen=(endpoint,))
    with pytest.raises(ConfigError, match=r"access_control='acl.json': needs tls"):
        ZenohConfig(listen=("tcp/127.0.0.1:7447",), access_control="acl.json")

    def open_with(files: TlsConfig, **fields) -> None:
        open_session(ZenohConfig(connect=(f"tls/127.0.0.1:{free_port()}",), tls=files, **fields)).close()

    good = tls(fleet, "robot_0")
    missing = str(tmp_path / "nowhere" / "robot_0.pem")
    with pytest.raises(RuntimeError, match=rf"tls\.certificate='{re.escape(missing)}': no such file"):
        open_with(TlsConfig(good.root_ca, missing, good.private_key))
    with pytest.raises(RuntimeError, match=r"private key .*robot_1\.key does not belong to certificate .*robot_0\.pem"):
        open_with(TlsConfig(good.root_ca, good.certificate, str(fleet / "robot_1.key")))
    make_fleet_certificates(tmp_path / "other", ["robot_0"])
    other = tls(tmp_path / "other", "robot_0")
    with pytest.raises(RuntimeError, match=r"robot_0\.pem was not issued by the root CA .*fleet.*ca\.pem"):
        open_with(TlsConfig(good.root_ca, other.certificate, other.private_key))
    with pytest.raises(RuntimeError, match=r"the certificate .*robot_0\.key: not a PEM certificate"):
        open_with(TlsConfig(good.root_ca, good.private_key, good.private_key))
    with pytest.raises(RuntimeError, match=r"access_control='.*nothing\.json': cannot read"):
        open_with(good, access_control=str(tmp_path / "nothing.json"))
    (tmp_path / "acl.json").write_text(json.dumps({"access_control": access_control(ROBOTS)}))
    with pytest.raises(RuntimeError, match=r"access_control='.*acl\.json': not a Zenoh access_control section"):
        open_with(good, access_control=str(tmp_path / "acl.json"))
    (tmp_path / "acl.json").write_text(json.dumps({**access_control(ROBOTS), "enabled": False}))
    with pytest.raises(RuntimeError, match=r"`enabled` is not true"):
        open_with(good, access_control=str(tmp_path / "acl.json"))
    taken = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", taken))
        s.listen()
        with pytest.raises(RuntimeError, match=r"cannot open a Zenoh session .*tls\.certificate='.*robot_0\.pem'"):
            open_session(ZenohConfig(listen=(f"tls/127.0.0.1:{taken}",), tls=good)).close()
