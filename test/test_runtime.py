"""Runtimes and the policy contract: ONNX Runtime and torch give the same chunks; providers in order."""

from pathlib import Path

import numpy as np
import pytest
from test_export import checkpoint
from test_model import TINY

from sop_ros.model.export import export_onnx
from sop_ros.model.policy import ChunkPolicy, Observation
from sop_ros.model.runtime import OnnxRuntime, TorchRuntime, load_runtime, provider_plan

TIER = "unit"  # what the tests need: conftest.TIERS


def test_providers_are_tried_tensorrt_then_cuda_then_cpu():
    cache = Path("/cache")
    plan = provider_plan(["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"], cache)
    assert [p if isinstance(p, str) else p[0] for p in plan] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
    ]  # fmt: skip
    assert plan[0][1] == {"trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": "/cache"}
    assert provider_plan(["CPUExecutionProvider"], None) == ["CPUExecutionProvider"]


def test_onnx_and_torch_runtimes_agree_through_the_policy_contract(tmp_path):
    ckpt = checkpoint(tmp_path)
    export_onnx(ckpt, tmp_path / "p.onnx")
    onnx_policy, torch_policy = ChunkPolicy(load_runtime(tmp_path / "p.onnx")), ChunkPolicy(load_runtime(ckpt))
    assert isinstance(onnx_policy.runtime, OnnxRuntime) and isinstance(torch_policy.runtime, TorchRuntime)
    assert onnx_policy.runtime.backend == "onnxruntime/CPUExecutionProvider"
    rng = np.random.default_rng(0)
    obs = Observation(rng.random((1, 3, 32, 32), dtype=np.float32), rng.standard_normal(9, dtype=np.float32),
                      "reach the goal")  # fmt: skip
    a, b = onnx_policy.infer(obs), torch_policy.infer(obs)
    assert a.actions.shape == (TINY.chunk, 4) and a.version == b.version == "v3"
    np.testing.assert_allclose(a.actions, b.actions, atol=1e-4)
    second = onnx_policy.infer(obs).actions
    onnx_policy.reset()
    np.testing.assert_array_equal(onnx_policy.infer(obs).actions, a.actions)  # same noise after reset
    assert not np.array_equal(second, a.actions)
    late = onnx_policy.next_noise()  # asked for at an episode's last state, computed after the next one began
    onnx_policy.reset()
    onnx_policy.infer(obs, late)
    np.testing.assert_array_equal(onnx_policy.infer(obs).actions, a.actions)  # the new episode's first draw


def test_a_file_that_is_not_a_policy_is_refused(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(Exception, match="(?i)protobuf|invalid|load"):
        load_runtime(tmp_path / "junk.onnx")
    with pytest.raises(FileNotFoundError, match="no such policy file"):
        load_runtime(tmp_path / "missing.onnx")


def test_a_robot_running_an_exported_policy_does_not_import_torch():
    """torch costs seconds at a node's start and ~150 ms per full garbage collection of its objects: the policy
    node (ONNX Runtime) must not pull it in."""
    import subprocess
    import sys

    code = "import sys, sop_ros.robot.policy_node; print(sorted(m for m in ('torch', 'onnx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
