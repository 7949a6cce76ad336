"""Runtimes that execute one inference step, behind one small interface.

`OnnxRuntime` runs the exported graph with ONNX Runtime, trying providers in order TensorRT (fp16, with an
engine cache, so a robot builds its engines once) -> CUDA -> CPU, and says which one it got. `TorchRuntime`
runs a checkpoint directly (development, and where ONNX Runtime is missing). Both take and return numpy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from sop_ros.model.inputs import INPUTS, OUTPUT

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class Runtime(Protocol):
    backend: str  # e.g. "onnxruntime/CPUExecutionProvider", "torch/cpu"
    metadata: dict[str, str]

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """INPUTS (batched) -> actions (B, chunk, action_dim)."""
        ...


def provider_plan(available: list[str], engine_cache: Path | None) -> list:
    """The providers to ask ONNX Runtime for, best first, limited to those this build has."""
    plan = []
    for name in PROVIDER_ORDER:
        if name not in available:
            continue
        if name == "TensorrtExecutionProvider":
            options = {"trt_fp16_enable": True}
            if engine_cache is not None:
                options |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(engine_cache)}
            plan.append((name, options))
        else:
            plan.append(name)
    return plan


class OnnxRuntime:
    def __init__(self, path: str | Path, engine_cache: str | Path | None = None, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        cache = Path(engine_cache) if engine_cache else None
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
        plan = provider_plan(ort.get_available_providers(), cache)
        self.session = ort.InferenceSession(str(path), options, providers=plan)
        self.backend = f"onnxruntime/{self.session.get_providers()[0]}"
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        names = [i.name for i in self.session.get_inputs()]
        if names != list(INPUTS):
            raise ValueError(f"{path}: graph inputs {names}, expected {list(INPUTS)}: not an exported sop_ros policy")

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([OUTPUT], inputs)[0]


class TorchRuntime:
    def __init__(self, checkpoint: str | Path, device: str = "cpu", guidance: float = 1.0) -> None:
        import torch

        from sop_ros.model.export import policy_metadata
        from sop_ros.model.vla import load_checkpoint

        self._torch = torch
        self.model, extra = load_checkpoint(checkpoint)
        self.model.to(device)
        self.device, self.guidance = device, guidance
        self.backend = f"torch/{device}"
        self.metadata = policy_metadata(self.model, extra, guidance)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        tensors = [torch.from_numpy(inputs[name]).to(self.device) for name in INPUTS]
        with torch.inference_mode():
            return self.model.sample_actions(*tensors, guidance=self.guidance).cpu().numpy()


def load_runtime(path: str | Path, engine_cache: str | Path | None = None, threads: int = 0) -> Runtime:
    """An .onnx file runs on ONNX Runtime; a checkpoint (.pt) on torch. `threads`: intra-op threads (0: default)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such policy file")
    if path.suffix == ".onnx":
        return OnnxRuntime(path, engine_cache, threads)
    return TorchRuntime(path)
