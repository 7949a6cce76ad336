"""Runtimes and the policy contract: ONNX Runtime and torch give the same chunks; the runtime is chosen by
measurement among those that start."""

from pathlib import Path

import numpy as np
import pytest
from test_export import checkpoint
from test_model import TINY

from sop_ros.model.export import export_onnx
from sop_ros.model.policy import ChunkPolicy, Observation
from sop_ros.model.runtime import (
    Candidate,
    OnnxRuntime,
    TorchRuntime,
    Unavailable,
    candidates,
    choose_runtime,
    load_runtime,
    provider_plan,
)

TIER = "unit"  # what the tests need: conftest.TIERS


def test_each_kind_asks_onnx_runtime_for_its_provider_then_the_cpu():
    cache = Path("/cache")
    assert provider_plan("tensorrt", cache) == [("TensorrtExecutionProvider", {
        "trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": "/cache"}),
        "CPUExecutionProvider"]  # fmt: skip
    assert provider_plan("cuda-graph", None) == [("CUDAExecutionProvider", {"enable_cuda_graph": "1"}),
                                                 "CPUExecutionProvider"]  # fmt: skip
    assert provider_plan("cuda", None) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert provider_plan("cpu", None) == ["CPUExecutionProvider"]


class FakeRuntime:
    metadata: dict = {}

    def __init__(self, kind):
        self.backend, self.runs = f"fake/{kind}", 0

    def run(self, inputs):
        self.runs += 1
        return np.zeros_like(inputs["noise"])


def fake(kind, fails=None):
    def load():
        if fails is not None:
            raise fails
        return FakeRuntime(kind)

    return Candidate(kind, load)


def test_the_fastest_p99_of_the_runtimes_that_start_is_chosen_and_missing_ones_are_skipped_with_one_line():
    p99 = {"tensorrt": 9.0, "cuda-graph": 1.5, "cuda": 11.0, "cpu": 3.0}
    lines = []
    options = [fake("tensorrt", Unavailable("TensorrtExecutionProvider did not start: libnvinfer.so missing")),
               fake("cuda-graph"), fake("cuda"), fake("cpu")]  # fmt: skip
    runtime, timings = choose_runtime(options, log=lines.append,
                                      timer=lambda rt: {"p50_ms": 1.0, "p99_ms": p99[rt.backend[5:]]})  # fmt: skip
    assert runtime.backend == "fake/cuda-graph" and runtime.runs == 1  # warmed once at load
    assert set(timings) == {"cuda-graph", "cuda", "cpu"} and timings["cpu"]["p99_ms"] == 3.0
    skipped = [line for line in lines if "skipped" in line]
    assert skipped == ["runtime tensorrt skipped: Unavailable: TensorrtExecutionProvider did not start: "
                       "libnvinfer.so missing"]  # fmt: skip
    assert "runtime cuda-graph (fake/cuda-graph) chosen" in lines[-1]
    # Without the graph mode the CPU's p99 beats the CUDA provider's, as measured on a small model.
    runtime, _ = choose_runtime([fake("cuda"), fake("cpu")], log=lines.append,
                                timer=lambda rt: {"p50_ms": 1.0, "p99_ms": p99[rt.backend[5:]]})  # fmt: skip
    assert runtime.backend == "fake/cpu"


def test_a_configured_order_takes_the_first_that_starts_untimed_and_a_lone_runtime_is_not_timed():
    def timer(rt):
        raise AssertionError("not to be timed")

    options = [fake("tensorrt", Unavailable("no GPU")), fake("cuda"), fake("cpu")]
    runtime, timings = choose_runtime(options, order=("cpu", "cuda"), log=lambda _: None, timer=timer)
    assert runtime.backend == "fake/cpu" and timings == {}
    runtime, timings = choose_runtime(options, order=("tensorrt", "cuda"), log=lambda _: None, timer=timer)
    assert runtime.backend == "fake/cuda" and timings == {}
    runtime, timings = choose_runtime([fake("tensorrt", Unavailable("no GPU")), fake("cpu")], log=lambda _: None,
                                      timer=timer)  # fmt: skip
    assert runtime.backend == "fake/cpu" and timings == {}
    with pytest.raises(Unavailable, match="no runtime could start: tensorrt: no GPU; cuda: no driver"):
        choose_runtime([fake("tensorrt", Unavailable("no GPU")), fake("cuda", Unavailable("no driver"))],
                       log=lambda _: None)  # fmt: skip
    with pytest.raises(ValueError, match="damaged"):  # a file every runtime refuses: its own error
        choose_runtime([fake("cuda", Unavailable("no driver")), fake("cpu", ValueError("damaged"))],
                       log=lambda _: None)  # fmt: skip


def test_without_a_gpu_the_cpu_runtime_is_the_one_candidate_and_loads_silently(tmp_path):
    ckpt = checkpoint(tmp_path)
    export_onnx(ckpt, tmp_path / "p.onnx")
    assert [c.kind for c in candidates(tmp_path / "p.onnx")] == ["cpu"]
    assert [c.kind for c in candidates(ckpt)] == ["cpu"]
    lines = []
    runtime = load_runtime(tmp_path / "p.onnx", log=lines.append)
    assert runtime.backend == "onnxruntime/CPUExecutionProvider" and lines == []
    with pytest.raises(ValueError, match="not among tensorrt, cuda-graph, cuda, cpu"):
        load_runtime(tmp_path / "p.onnx", order=("gpu",))
    # Asked for a provider this build lacks, the ONNX runtime says so rather than running on another.
    with pytest.raises(Unavailable, match="no CUDAExecutionProvider"):
        OnnxRuntime(tmp_path / "p.onnx", kind="cuda")
    with pytest.raises(Unavailable, match="no CUDA device"):
        TorchRuntime(ckpt, device="cuda")


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


def test_the_runtime_bench_times_each_runtime_and_says_how_far_its_chunk_is_from_torch_on_the_cpu(tmp_path):
    from sop_ros.bench.inference import bench_runtimes

    ckpt = checkpoint(tmp_path)
    export_onnx(ckpt, tmp_path / "p.onnx")
    runtimes = bench_runtimes(ckpt, tmp_path / "p.onnx", iterations=5, threads=1)
    assert set(runtimes) == {"torch/cpu", "onnxruntime/CPUExecutionProvider"}  # no GPU here
    for r in runtimes.values():
        assert r["n"] == 5 and 0 < r["p50_ms"] <= r["p99_ms"]
    assert runtimes["torch/cpu"]["max_abs_diff"] == 0.0  # the reference itself
    assert runtimes["onnxruntime/CPUExecutionProvider"]["max_abs_diff"] < 1e-4
