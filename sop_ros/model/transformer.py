"""Pre-norm transformer layers, written for export to a small ONNX graph.

The parameters are laid out as in torch.nn.TransformerEncoderLayer / TransformerDecoderLayer (norm_first,
ReLU, batch first), and the layers compute what those compute. Two things differ, both for the robot:
- heads are split and merged by reshapes whose token count is a Python int, so a traced graph holds it as a
  constant (the batch stays dynamic) instead of computing shapes: torch's layers traced to ~7,500 nodes for one
  inference step, these to ~1,000, and ONNX Runtime builds the session 4x faster and frees it (which holds the
  GIL of the robot's control process) 5x faster;
- a decoder's keys and values of its memory are computed once by `keys_values` and reused, so a flow
  integration attends to the same context in every step without projecting it again.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn
from torch.nn import functional

KeysValues = list[tuple[Tensor, Tensor]]  # per decoder layer: (keys, values), each (B, heads, S, head_dim)


def tokens(x: Tensor) -> int:
    """The token count of (B, T, width) as a Python int: tracing records it as a constant of the graph."""
    if not torch.jit.is_tracing():
        return x.shape[1]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Converting a tensor to a Python integer", torch.jit.TracerWarning)
        return int(x.shape[1])


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.width, self.heads, self.head_dim, self.dropout = width, heads, width // heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))  # query, key, value rows
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)  # as nn.MultiheadAttention initialises them
        nn.init.zeros_(self.out_proj.bias)

    def project(self, x: Tensor, part: int) -> Tensor:
        """(B, T, width) -> (B, heads, T, head_dim) through the query (0), key (1) or value (2) projection."""
        rows = slice(part * self.width, (part + 1) * self.width)
        y = functional.linear(x, self.in_proj_weight[rows], self.in_proj_bias[rows])
        return y.reshape(-1, tokens(x), self.heads, self.head_dim).transpose(1, 2)

    def keys_values(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        return self.project(memory, 1), self.project(memory, 2)

    def forward(self, x: Tensor, keys_values: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Attention of `x` to itself, or to the memory whose `keys_values` are given."""
        keys, values = keys_values if keys_values is not None else self.keys_values(x)
        out = functional.scaled_dot_product_attention(self.project(x, 0), keys, values,
                                                      dropout_p=self.dropout if self.training else 0.0,
                                                      scale=1.0 / math.sqrt(self.head_dim))
        return self.out_proj(out.transpose(1, 2).reshape(-1, tokens(x), self.width))


def _feed_forward(layer: nn.Module, x: Tensor) -> Tensor:
    """The layers' MLP (linear1, ReLU, linear2: torch's names, on the layer itself)."""
    hidden = functional.dropout(functional.relu(layer.linear1(x)), layer.dropout_p, layer.training)
    return functional.dropout(layer.linear2(hidden), layer.dropout_p, layer.training)


class EncoderLayer(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = Attention(width, heads, dropout)
        self.linear1, self.linear2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.dropout_p = dropout

    def forward(self, x: Tensor) -> Tensor:
        x = x + functional.dropout(self.self_attn(self.norm1(x)), self.dropout_p, self.training)
        return x + _feed_forward(self, self.norm2(x))


class DecoderLayer(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = Attention(width, heads, dropout)
        self.multihead_attn = Attention(width, heads, dropout)
        self.linear1, self.linear2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.dropout_p = dropout

    def forward(self, x: Tensor, memory: tuple[Tensor, Tensor]) -> Tensor:
        x = x + functional.dropout(self.self_attn(self.norm1(x)), self.dropout_p, self.training)
        x = x + functional.dropout(self.multihead_attn(self.norm2(x), memory), self.dropout_p, self.training)
        return x + _feed_forward(self, self.norm3(x))


class Encoder(nn.Module):
    def __init__(self, width: int, heads: int, depth: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(width, heads, dropout) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class Decoder(nn.Module):
    def __init__(self, width: int, heads: int, depth: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(width, heads, dropout) for _ in range(depth))

    def keys_values(self, memory: Tensor) -> KeysValues:
        """What every layer's cross-attention reads of `memory` (B, S, width): compute once, decode many times."""
        return [layer.multihead_attn.keys_values(memory) for layer in self.layers]

    def forward(self, x: Tensor, memory: KeysValues) -> Tensor:
        for layer, keys_values in zip(self.layers, memory, strict=True):
            x = layer(x, keys_values)
        return x
