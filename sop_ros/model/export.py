"""`sop export`: a checkpoint as one ONNX graph per inference step, what robots run.

The graph holds the whole flow integration (encoder once, `flow_steps` action-head steps), takes the noise
as an input (so runs are reproducible and testable against torch), has a dynamic batch dimension, and
carries in its metadata everything a robot needs to feed it and to know what it runs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import torch

from sop_ros.model.inputs import OUTPUT, graph_inputs
from sop_ros.model.vla import VLAPolicy, load_checkpoint

ACTION_NAMES = ("x", "y", "z", "gripper")


class InferenceStep(torch.nn.Module):
    """One inference step as a module: inputs -> action chunk, with a fixed guidance weight."""

    def __init__(self, model: VLAPolicy, guidance: float) -> None:
        super().__init__()
        self.model, self.guidance = model, guidance

    def forward(self, images, proprio, instruction, indicator, noise, prefix=None, prefix_len=None):  # noqa: D102
        return self.model.sample_actions(images, proprio, instruction, indicator, noise, self.guidance, prefix,
                                         prefix_len)  # fmt: skip


def example_inputs(model: VLAPolicy, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    c = model.config
    g = torch.Generator().manual_seed(seed)
    inputs = (
        torch.rand(batch, c.cameras, 3, c.image_size, c.image_size, generator=g),
        torch.randn(batch, c.proprio_dim, generator=g),
        torch.randint(1, 256, (batch, c.instruction_bytes), generator=g),
        torch.randint(0, 3, (batch,), generator=g),
        torch.randn(batch, c.chunk, c.action_dim, generator=g),
    )
    if not c.rtc_max_prefix:
        return inputs
    return (*inputs, torch.randn(batch, c.chunk, c.action_dim, generator=g),
            torch.randint(0, c.rtc_max_prefix + 1, (batch,), generator=g))  # fmt: skip


def policy_metadata(model: VLAPolicy, extra: dict, guidance: float) -> dict[str, str]:
    """What a robot needs to know about a policy: the ONNX metadata, and the torch runtime's too."""
    return {
        "sop_ros.version": str(extra.get("version", "")),
        "sop_ros.tasks": json.dumps(extra.get("tasks", [])),
        "sop_ros.cameras": json.dumps(extra.get("cameras", [])),
        "sop_ros.action_names": json.dumps(ACTION_NAMES[: model.config.action_dim]),
        "sop_ros.model_config": json.dumps(dataclasses.asdict(model.config)),
        "sop_ros.guidance": str(guidance),
        # RECAP policies are asked for the positive-advantage behaviour at inference ("" for the others).
        "sop_ros.indicator": str(extra.get("indicator", "")),
        "sop_ros.normalisation": json.dumps(
            {
                name: getattr(model, name).tolist()
                for name in ("proprio_mean", "proprio_std", "action_mean", "action_std")
            }
        ),
    }


def export_onnx(checkpoint: str | Path, out: str | Path, guidance: float = 1.0, opset: int = 18) -> dict[str, str]:
    """Write `out` and return its metadata."""
    model, extra = load_checkpoint(checkpoint)
    step = InferenceStep(model, guidance).eval()
    names = graph_inputs(model.config.rtc_max_prefix)
    # Traced with a batch of 2: a batch-1 example would fix the batch dimension to 1.
    torch.onnx.export(
        step,
        example_inputs(model, 2),
        str(out),
        input_names=list(names),
        output_names=[OUTPUT],
        dynamic_axes={name: {0: "batch"} for name in (*names, OUTPUT)},
        opset_version=opset,
        dynamo=False,
    )
    metadata = policy_metadata(model, extra, guidance)
    proto = onnx.load(str(out))
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    return metadata


def parity(
    checkpoint: str | Path, onnx_path: str | Path, inputs: tuple[torch.Tensor, ...], guidance: float = 1.0
) -> float:
    """Max absolute difference between torch and ONNX Runtime (CPU) on `inputs`."""
    import onnxruntime as ort

    model, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        expected = InferenceStep(model, guidance)(*inputs).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = graph_inputs(model.config.rtc_max_prefix)
    actual = session.run([OUTPUT], {name: x.numpy() for name, x in zip(names, inputs, strict=True)})[0]
    return float(np.abs(actual - expected).max())
