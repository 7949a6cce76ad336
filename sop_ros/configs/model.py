"""The VLA model's size and shape: small enough to train on a CPU here, and configurable upward."""

from __future__ import annotations

from dataclasses import dataclass

from sop_ros.configs import require


@dataclass(frozen=True)
class ModelConfig:
    cameras: int = 2
    # 64 px and a light CNN: a training step ~2.5x cheaper than 96 px with (32, 64, 96, 128), at the same
    # success after pretraining (measured on three tasks), so the learner gets more steps per simulated minute.
    image_size: int = 64  # square inputs, after preprocessing
    proprio_dim: int = 9  # the arm's joint positions
    action_dim: int = 4
    chunk: int = 16  # actions predicted per inference step
    width: int = 128  # transformer width of the context and the action head
    depth: int = 2  # context transformer layers
    head_depth: int = 2  # action-head (flow) transformer layers
    heads: int = 4
    cnn_channels: tuple[int, ...] = (16, 32, 64, 128)  # one stride-2 stage each
    instruction_bytes: int = 96  # UTF-8 bytes of the instruction kept
    flow_steps: int = 10  # Euler steps from noise to an action chunk at inference
    dropout: float = 0.0
    # Real-time chunking, trained in (Black et al. 2025, training-time variant): each training chunk gets a
    # prefix of 0..rtc_max_prefix of its own actions as given (clean, at flow time 1) and is scored on the rest,
    # so at inference the actions that will run before the chunk arrives can be given and the rest follow on
    # from them. 0: off (a policy that cannot take a prefix).
    rtc_max_prefix: int = 0
    # Of the training chunks, those given no prefix: a chunk's first actions are scored only where no prefix
    # covers them, and they are what runs first without one (the first chunk of an episode, blend, ensemble).
    # Drawn uniformly over 0..rtc_max_prefix (1/11 for 10), the first action learned from a tenth of the rows
    # and the policy scored 21% against the plain recipe's ~50% (docs/results/rtc).
    rtc_no_prefix_share: float = 0.5

    def __post_init__(self) -> None:
        for key in ("cameras", "proprio_dim", "action_dim", "chunk", "width", "depth", "head_depth", "heads"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")
        require(self.width % self.heads == 0, "width", self.width, f"must be divisible by heads ({self.heads})")
        stride = 2 ** len(self.cnn_channels)
        require(bool(self.cnn_channels) and self.image_size % stride == 0, "image_size", self.image_size,
                f"must be divisible by 2^len(cnn_channels) = {stride}")  # fmt: skip
        require(self.instruction_bytes >= 8, "instruction_bytes", self.instruction_bytes, "must be >= 8")
        require(self.flow_steps >= 1, "flow_steps", self.flow_steps, "must be >= 1")
        require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "must be in [0, 1)")
        require(0 <= self.rtc_no_prefix_share <= 1, "rtc_no_prefix_share", self.rtc_no_prefix_share,
                "must be in [0, 1]")  # fmt: skip
        require(0 <= self.rtc_max_prefix < self.chunk, "rtc_max_prefix", self.rtc_max_prefix,
                f"must be in 0..chunk - 1 ({self.chunk - 1}): at least one action is predicted")  # fmt: skip

    @property
    def feature_size(self) -> int:
        """Side of the image feature map: image_size / 2^stages."""
        return self.image_size // 2 ** len(self.cnn_channels)
