"""Your own policy class: the config's checks, the plugin's result checks, and the openpi websocket client against a
local server (its wire format, its errors)."""

import json
import socket

import msgpack
import numpy as np
import pytest
from openpi_server import OpenpiServer

from sop_ros.configs import ConfigError, from_dict
from sop_ros.configs.robot import PolicyConfig, RobotLaunchConfig
from sop_ros.launch.plan import plan
from sop_ros.model.plugin import PluginPolicy, make_plugin
from sop_ros.model.policy import Observation, PolicyResult
from sop_ros.model.remote_policy import WebsocketPolicy, packb, unpackb

TIER = "unit"  # what the tests need: conftest.TIERS

OBS = Observation(np.full((2, 3, 8, 8), 0.5, np.float32), np.arange(9, dtype=np.float32), "reach the goal",
                  ("corner", "gripperPOV"))  # fmt: skip


class Fixed:
    """A policy class of the robot's own: the same chunk every time."""

    def __init__(self, action=(0.1, 0.2, 0.3, 0.4), steps: int = 3) -> None:
        self.chunk = np.tile(np.asarray(action, np.float32), (steps, 1))
        self.resets = 0

    def infer(self, obs: Observation) -> PolicyResult:
        return PolicyResult(self.chunk)

    def reset(self) -> None:
        self.resets += 1


class NoReset:
    def infer(self, obs):
        return PolicyResult(np.zeros((1, 4)))


@pytest.mark.parametrize(("values", "says"), [
    ({"policy_class": "test_policy_plugins.Fixed"}, "policy_class='test_policy_plugins.Fixed': must be 'package."),
    ({"policy_class": "no_such_module_here:Fixed"}, "module 'no_such_module_here' cannot be imported"),
    ({"policy_class": "test_policy_plugins:Missing"}, "module 'test_policy_plugins' has no class 'Missing'"),
    ({"policy_class": "test_policy_plugins:NoReset"}, "class NoReset lacks reset"),
    ({"policy_class": "test_policy_plugins:Fixed", "policy_args": {"speed": 2}}, "policy_args={'speed': 2}: do not"),
    ({"policy_args": {"steps": 2}}, "policy_args={'steps': 2}: must be empty unless policy_class"),
    ({"policy_class": "test_policy_plugins:Fixed", "policy_path": "p.onnx"}, "policy_path='p.onnx': must be empty"),
])  # fmt: skip
def test_a_bad_policy_class_is_refused_when_the_config_is_read_naming_the_key(values, says):
    with pytest.raises(ConfigError) as err:
        from_dict(PolicyConfig, values)
    assert says in str(err.value)


def test_a_policy_class_with_its_arguments_is_accepted_and_reaches_the_node_as_json():
    policy = {"policy_class": "test_policy_plugins:Fixed", "policy_args": {"action": [1, 0, 0, 0], "steps": 2}}
    config = from_dict(RobotLaunchConfig, {"nodes": {"policy": policy}})
    assert config.nodes.policy.policy_args == {"action": [1, 0, 0, 0], "steps": 2}
    (spec,) = plan(config)
    # A parameters file cannot give a node a mapping: it would become undeclared dotted parameters.
    assert json.loads(spec.parameters["policy_args"]) == {"action": [1, 0, 0, 0], "steps": 2}


def test_a_plugin_runs_as_the_built_in_and_its_results_are_checked():
    policy = make_plugin(Fixed, {"steps": 2}, action_dim=4)
    result = policy.infer(OBS, policy.next_noise())
    assert result.actions.shape == (2, 4) and result.backend == "Fixed" and result.version == "Fixed"
    policy.reset()
    assert policy.policy.resets == 1
    assert PluginPolicy(Fixed(), action_dim=3).input_mismatch(OBS) == ""
    with pytest.raises(ValueError, match=r"shape \(3, 4\), expected \(steps >= 1, 3\)"):
        PluginPolicy(Fixed(), action_dim=3).infer(OBS)
    with pytest.raises(ValueError, match="not all finite"):
        PluginPolicy(Fixed(action=(np.nan, 0, 0, 0)), action_dim=4).infer(OBS)
    with pytest.raises(ValueError, match=r"Fixed\(\*\*\{'speed': 1\}\) failed: TypeError"):
        make_plugin(Fixed, {"speed": 1}, action_dim=4)


def test_arrays_go_over_the_wire_as_openpi_encodes_them_and_come_back_equal():
    arrays = {"f32": np.arange(12, dtype=np.float32).reshape(3, 4), "u8": np.arange(24, dtype=np.uint8).reshape(4, 6),
              "i64": np.array([-1, 2], np.int64), "text": "pick", "nested": {"x": np.float64(2.5)}}  # fmt: skip
    raw = msgpack.unpackb(packb(arrays))
    assert raw["f32"] == {"__ndarray__": True, "data": arrays["f32"].tobytes(), "dtype": "<f4", "shape": [3, 4]}
    back = unpackb(packb(arrays))
    for key in ("f32", "u8", "i64"):
        assert back[key].dtype == arrays[key].dtype and np.array_equal(back[key], arrays[key])
    assert back["text"] == "pick" and back["nested"]["x"] == 2.5
    # openpi's own packer writes the map's keys as bytes
    openpi_style = msgpack.packb({b"__ndarray__": True, b"data": b"\x00\x00\x80?", b"dtype": "<f4", b"shape": (1,)})
    assert unpackb(openpi_style).tolist() == [1.0]
    with pytest.raises(ValueError, match="dtype complex"):
        packb({"z": np.zeros(2, np.complex64)})


def test_the_websocket_policy_sends_an_openpi_observation_and_returns_the_chunk():
    server = OpenpiServer((0.5, 0.0, -0.5, 1.0), steps=6)
    try:
        policy = WebsocketPolicy(port=server.port, action_steps=4, extra={"robot": "sim"})
        result = policy.infer(OBS)
        policy.close()
    finally:
        server.close()
    assert policy.version == "served-v1" and policy.metadata == {"version": "served-v1"}
    assert result.actions.shape == (4, 4) and np.allclose(result.actions[0], (0.5, 0.0, -0.5, 1.0))
    (sent,) = server.received
    assert sorted(sent) == ["observation/corner", "observation/gripperPOV", "observation/state", "prompt", "robot"]
    assert sent["observation/corner"].shape == (8, 8, 3) and sent["observation/corner"].dtype == np.uint8
    assert int(sent["observation/corner"][0, 0, 0]) == 128 and sent["prompt"] == "reach the goal"
    assert np.array_equal(sent["observation/state"], OBS.proprio)


def test_an_absent_server_fails_to_connect_saying_where():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match=f"ws://127.0.0.1:{port}: cannot connect"):
        WebsocketPolicy(port=port, connect_timeout_s=2.0)


@pytest.mark.parametrize(("reply", "error", "says"), [
    (lambda obs: "Traceback: model exploded", RuntimeError, "failed: Traceback: model exploded"),
    (lambda obs: packb({"action": np.zeros((2, 4))}), ValueError, "reply without 'actions'"),
    (lambda obs: packb({"actions": np.zeros(4)}), ValueError, r"'actions' is \(4,\), not a numeric array"),
    (lambda obs: b"\xc1", ValueError, "not msgpack"),
])  # fmt: skip
def test_a_failed_or_malformed_reply_raises_saying_why(reply, error, says):
    server = OpenpiServer((0, 0, 0, 0), reply=reply)
    try:
        policy = WebsocketPolicy(port=server.port, reply_timeout_s=5.0)
        with pytest.raises(error, match=says):
            policy.infer(OBS)
        policy.close()
    finally:
        server.close()
