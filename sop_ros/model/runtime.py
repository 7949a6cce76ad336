"""Runtimes that execute one inference step, behind one small interface, and the choice among them.

`OnnxRuntime` runs the exported graph with ONNX Runtime on one execution provider: TensorRT (fp16, with an
engine cache, so a robot builds its engines once), CUDA, CUDA replaying the step as a CUDA graph (I/O bound to
fixed device buffers), or the CPU. `TorchRuntime` runs a checkpoint directly, eagerly or, on a GPU, captured
once as a CUDA graph and replayed (development, and robots given checkpoints). Both take and return numpy.

Which one a robot uses is measured, not assumed: on a GPU the CUDA provider can be slower than the CPU for a
small model (launch-bound), and TensorRT may be listed but lack its libraries. At load, every candidate this
robot has is started and warmed on the warm-up input (engines built, graphs captured: never on the control
path), timed, and the lowest p99 runs; one that cannot start is skipped with one log line. A configured order
instead takes the first that starts, untimed. A robot with one candidate (a CPU) runs it without timing.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np

from sop_ros.configs.robot import RUNTIME_KINDS
from sop_ros.model.inputs import OUTPUT, graph_inputs, rtc_max_prefix

# The kinds are RUNTIME_KINDS: "cuda-graph" is ONNX Runtime's CUDA provider in its CUDA-graph mode for an exported
# graph, and torch's CUDA graphs for a checkpoint.
PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda-graph": "CUDAExecutionProvider",
             "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}  # fmt: skip
TIMED_RUNS = 30  # per candidate at load, after its warm-up run


class Runtime(Protocol):
    backend: str  # e.g. "onnxruntime/CPUExecutionProvider", "torch/cuda+cuda-graph"
    metadata: dict[str, str]

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """INPUTS (batched) -> actions (B, chunk, action_dim)."""
        ...


class Unavailable(RuntimeError):
    """A candidate this robot cannot run: its provider or libraries are missing, or there is no GPU."""


def provider_plan(kind: str, engine_cache: Path | None) -> list:
    """The providers to ask ONNX Runtime for to run `kind`: its own, then the CPU for nodes it lacks."""
    name = PROVIDERS[kind]
    if kind == "tensorrt":
        options = {"trt_fp16_enable": True}
        if engine_cache is not None:
            options |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(engine_cache)}
        return [(name, options), "CPUExecutionProvider"]
    if kind == "cuda-graph":
        return [(name, {"enable_cuda_graph": "1"}), "CPUExecutionProvider"]
    return [name] if kind == "cpu" else [name, "CPUExecutionProvider"]


def warmup_feed(metadata: dict[str, str]) -> dict[str, np.ndarray]:
    """A batch of one zero observation shaped as the policy's metadata says: what loading warms and times on."""
    config = json.loads(metadata.get("sop_ros.model_config", "{}"))
    size, chunk = int(config.get("image_size", 96)), int(config.get("chunk", 16))
    return {
        "images": np.zeros((1, int(config.get("cameras", 1)), 3, size, size), np.float32),
        "proprio": np.zeros((1, int(config.get("proprio_dim", 9))), np.float32),
        "instruction": np.zeros((1, int(config.get("instruction_bytes", 96))), np.int64),
        "indicator": np.zeros((1,), np.int64),
        "noise": np.zeros((1, chunk, int(config.get("action_dim", 4))), np.float32),
    } | ({"prefix": np.zeros((1, chunk, int(config.get("action_dim", 4))), np.float32),
          "prefix_len": np.zeros((1,), np.int64)} if config.get("rtc_max_prefix", 0) else {})  # fmt: skip


class OnnxRuntime:
    def __init__(self, path: str | Path, engine_cache: str | Path | None = None, threads: int = 0,
                 kind: str = "cpu") -> None:  # fmt: skip
        import onnxruntime as ort

        if PROVIDERS[kind] not in ort.get_available_providers():
            raise Unavailable(f"this ONNX Runtime build has no {PROVIDERS[kind]}")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # a provider that cannot start is reported once, by the chooser
        if threads:
            options.intra_op_num_threads = threads
        cache = Path(engine_cache) if engine_cache else None
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
        # ONNX Runtime prints a banner on stdout and falls back by itself when a provider's libraries are missing:
        # the banner is kept from the robot's log, and a fallback counts as this candidate being unavailable.
        with contextlib.redirect_stdout(io.StringIO()) as said:
            self.session = ort.InferenceSession(str(path), options, providers=provider_plan(kind, cache))
        got = self.session.get_providers()[0]
        if got != PROVIDERS[kind]:
            why = next((line for line in said.getvalue().splitlines() if "EP Error" in line), "")[:200]
            raise Unavailable(f"{PROVIDERS[kind]} did not start{': ' + why if why else ''}")
        self.backend = f"onnxruntime/{got}" + ("+cuda-graph" if kind == "cuda-graph" else "")
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        names, self.inputs = [i.name for i in self.session.get_inputs()], graph_inputs(rtc_max_prefix(self.metadata))
        if names != list(self.inputs):
            raise ValueError(f"{path}: graph inputs {names}, expected {list(self.inputs)}: not an exported sop_ros "
                             "policy")  # fmt: skip
        self._ort, self._graph_mode = ort, kind == "cuda-graph"
        self._bound: dict | None = None  # cuda-graph: the device buffers the captured graph reads and writes

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if not self._graph_mode:
            return self.session.run([OUTPUT], inputs)[0]
        shapes = {name: inputs[name].shape for name in self.inputs}
        if self._bound is None or self._bound["shapes"] != shapes:
            self._bind(inputs, shapes)  # the first run captures the graph on these buffers
        else:
            for name in self.inputs:
                self._bound["inputs"][name].update_inplace(np.ascontiguousarray(inputs[name]))
        self.session.run_with_iobinding(self._bound["binding"])
        return self._bound["binding"].copy_outputs_to_cpu()[0]

    def _bind(self, inputs: dict[str, np.ndarray], shapes: dict) -> None:
        ort = self._ort
        binding = self.session.io_binding()
        values = {name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(inputs[name]), "cuda", 0)
                  for name in self.inputs}  # fmt: skip
        for name, value in values.items():
            binding.bind_ortvalue_input(name, value)
        noise = inputs["noise"]  # the actions have the noise's shape
        output = ort.OrtValue.ortvalue_from_shape_and_type(noise.shape, np.float32, "cuda", 0)
        binding.bind_ortvalue_output(OUTPUT, output)
        self._bound = {"shapes": shapes, "binding": binding, "inputs": values, "output": output}


class TorchRuntime:
    def __init__(self, checkpoint: str | Path, device: str = "cpu", guidance: float = 1.0,
                 cuda_graph: bool = False) -> None:  # fmt: skip
        import torch

        from sop_ros.model.export import policy_metadata
        from sop_ros.model.vla import load_checkpoint

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise Unavailable("torch sees no CUDA device")
        self._torch = torch
        self.model, extra = load_checkpoint(checkpoint)
        self.model.to(device).eval()
        self.device, self.guidance, self.cuda_graph = device, guidance, cuda_graph and device.startswith("cuda")
        self.backend = f"torch/{device}" + ("+cuda-graph" if self.cuda_graph else "")
        self.metadata = policy_metadata(self.model, extra, guidance)
        self.inputs = graph_inputs(self.model.config.rtc_max_prefix)
        self._graph = None  # (shapes, graph, static inputs, static output)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        if self.cuda_graph:
            return self._replay(inputs)
        tensors = {name: torch.from_numpy(inputs[name]).to(self.device) for name in self.inputs}
        with torch.inference_mode():
            return self.model.sample_actions(**tensors, guidance=self.guidance).cpu().numpy()

    def _replay(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        shapes = tuple(inputs[name].shape for name in self.inputs)
        if self._graph is None or self._graph[0] != shapes:
            self._capture(inputs, shapes)  # at load (the warm-up run), or for a new batch size
        _, graph, static, out = self._graph
        for name in self.inputs:
            static[name].copy_(torch.from_numpy(inputs[name]))
        graph.replay()
        return out.cpu().numpy()

    def _capture(self, inputs: dict[str, np.ndarray], shapes: tuple) -> None:
        torch = self._torch
        static = {name: torch.from_numpy(inputs[name]).to(self.device) for name in self.inputs}
        side = torch.cuda.Stream()  # kernels are warmed (and lazily built) on a side stream before capture
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):
                self.model.sample_actions(**static, guidance=self.guidance)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            out = self.model.sample_actions(**static, guidance=self.guidance)
        self._graph = (shapes, graph, static, out)


@dataclass(frozen=True)
class Candidate:
    kind: str  # one of RUNTIME_KINDS
    load: Callable[[], Runtime]


def candidates(path: Path, engine_cache: str | Path | None = None, threads: int = 0) -> list[Candidate]:
    """Every way this robot may run `path`, best first: an .onnx file on ONNX Runtime's providers, a checkpoint
    on torch. Whether each one really starts is found by loading it."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        built = ort.get_available_providers()  # a provider this build lacks is no candidate: nothing to log
        return [Candidate(kind, partial(OnnxRuntime, path, engine_cache, threads, kind)) for kind in RUNTIME_KINDS
                if PROVIDERS[kind] in built]  # fmt: skip
    import torch

    torch_kinds = {"cuda-graph": ("cuda", True), "cuda": ("cuda", False), "cpu": ("cpu", False)}
    return [Candidate(kind, partial(TorchRuntime, path, device, cuda_graph=graph))
            for kind, (device, graph) in torch_kinds.items() if device == "cpu" or torch.cuda.is_available()]


def p50_p99(latencies_ms: Sequence[float]) -> tuple[float, float]:
    return float(np.percentile(latencies_ms, 50)), float(np.percentile(latencies_ms, 99))


def choose_runtime(options: Sequence[Candidate], order: Sequence[str] = (), log: Callable[[str], None] = print,
                   timer: Callable[[Runtime], dict[str, float]] | None = None,
                   ) -> tuple[Runtime, dict[str, dict[str, float]]]:  # fmt: skip
    """The runtime to use and the timings it was chosen by ({kind: {p50_ms, p99_ms}}, by `timer`; empty when
    not timed).

    With `order`, the first of those kinds that starts, untimed. Otherwise every candidate that starts is warmed
    and timed on the warm-up input, and the lowest p99 is kept; alone, it is kept untimed. Candidates that
    cannot start are skipped with one log line each; none starting raises Unavailable with every reason."""
    if order:
        by_kind = {c.kind: c for c in options}
        options = [by_kind[k] for k in order if k in by_kind]
    started: list[tuple[str, Runtime]] = []
    failures: list[tuple[str, Exception]] = []
    for option in options:
        try:
            runtime = option.load()
            runtime.run(warmup_feed(runtime.metadata))  # builds engines, captures graphs: off the control path
        except Exception as err:  # noqa: BLE001 - the next candidate may run it; every reason is kept
            failures.append((option.kind, err))
            log(f"runtime {option.kind} skipped: {type(err).__name__}: {str(err).strip()[:200]}")
            continue
        started.append((option.kind, runtime))
        if order:
            break
    if not started:
        # A damaged file fails on every candidate: its own error says why, not that no runtime started.
        errors = [err for _, err in failures if not isinstance(err, Unavailable)]
        if errors:
            raise errors[0]
        raise Unavailable("no runtime could start: " + "; ".join(f"{k}: {e}" for k, e in failures))
    if len(started) == 1:
        return started[0][1], {}
    timer = timer or partial(time_runs, runs=TIMED_RUNS)
    timings = {kind: timer(runtime) for kind, runtime in started}
    kind, runtime = min(started, key=lambda s: timings[s[0]]["p99_ms"])
    log(f"runtime {kind} ({runtime.backend}) chosen: " + ", ".join(
        f"{k} p50 {t['p50_ms']:.2f} / p99 {t['p99_ms']:.2f} ms" for k, t in timings.items()))  # fmt: skip
    return runtime, timings


def time_runs(runtime: Runtime, runs: int) -> dict[str, float]:
    feed = warmup_feed(runtime.metadata)
    latencies = []
    for _ in range(runs):
        start = time.perf_counter()
        runtime.run(feed)
        latencies.append((time.perf_counter() - start) * 1000)
    p50, p99 = p50_p99(latencies)
    return {"p50_ms": round(p50, 3), "p99_ms": round(p99, 3)}


def load_runtime(path: str | Path, engine_cache: str | Path | None = None, threads: int = 0,
                 order: Sequence[str] = (), log: Callable[[str], None] = print) -> Runtime:  # fmt: skip
    """An .onnx file on ONNX Runtime, a checkpoint (.pt) on torch, by measurement or in `order` (RUNTIME_KINDS).
    `threads`: ONNX Runtime's intra-op threads (0: its default)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such policy file")
    unknown = [k for k in order if k not in RUNTIME_KINDS]
    if unknown:
        raise ValueError(f"runtime order {list(order)}: {unknown} not among {', '.join(RUNTIME_KINDS)}")
    return choose_runtime(candidates(path, engine_cache, threads), order, log)[0]
