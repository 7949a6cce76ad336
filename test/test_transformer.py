"""Our transformer layers against torch's own (the parameter layout and the arithmetic both)."""

import pytest
import torch
from torch import nn

from sop_ros.model.transformer import Decoder, Encoder

TIER = "unit"  # what the tests need: conftest.TIERS

WIDTH, HEADS = 32, 4


def torch_encoder(depth: int, dropout: float = 0.0) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(WIDTH, HEADS, 4 * WIDTH, dropout, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


def torch_decoder(depth: int) -> nn.TransformerDecoder:
    layer = nn.TransformerDecoderLayer(WIDTH, HEADS, 4 * WIDTH, 0.0, batch_first=True, norm_first=True)
    return nn.TransformerDecoder(layer, depth)


def randomised(module: nn.Module) -> nn.Module:
    """Every parameter random (biases and norms included), so a mixed-up weight cannot go unnoticed."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return module.eval()


def test_the_encoder_loads_torchs_weights_and_computes_what_torch_computes():
    reference = randomised(torch_encoder(2))
    ours = Encoder(WIDTH, HEADS, 2, 0.0).eval()
    ours.load_state_dict(reference.state_dict())  # strict: the same names and shapes
    x = torch.randn(3, 7, WIDTH)
    with torch.no_grad():
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            expected = reference(x)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
        assert torch.allclose(ours(x), expected, atol=1e-5)


def test_the_decoder_with_memory_keys_and_values_computed_once_matches_torch():
    reference = randomised(torch_decoder(2))
    ours = Decoder(WIDTH, HEADS, 2, 0.0).eval()
    ours.load_state_dict(reference.state_dict())
    x, memory = torch.randn(2, 5, WIDTH), torch.randn(2, 9, WIDTH)
    with torch.no_grad():
        cached = ours.keys_values(memory)
        assert torch.allclose(ours(x, cached), reference(x, memory), atol=1e-5)
        x2 = torch.randn(2, 5, WIDTH)  # the same keys and values serve another query (the next flow step)
        assert torch.allclose(ours(x2, cached), reference(x2, memory), atol=1e-5)


def test_a_weight_in_the_wrong_place_shows():
    reference = randomised(torch_decoder(1))
    ours = Decoder(WIDTH, HEADS, 1, 0.0).eval()
    state = reference.state_dict()
    weight = state["layers.0.multihead_attn.in_proj_weight"]
    state["layers.0.multihead_attn.in_proj_weight"] = torch.cat([weight[WIDTH:2 * WIDTH], weight[:WIDTH],
                                                                 weight[2 * WIDTH:]])  # keys <-> queries
    ours.load_state_dict(state)
    x, memory = torch.randn(2, 5, WIDTH), torch.randn(2, 9, WIDTH)
    with torch.no_grad():
        assert not torch.allclose(ours(x, ours.keys_values(memory)), reference(x, memory), atol=1e-3)


def test_dropout_acts_in_training_only():
    ours = Encoder(WIDTH, HEADS, 1, 0.5)
    x = torch.randn(2, 6, WIDTH)
    ours.train()
    assert not torch.allclose(ours(x), ours(x))
    ours.eval()
    assert torch.equal(ours(x), ours(x))


@pytest.mark.parametrize("depth", [1, 3])
def test_training_gradients_reach_every_parameter(depth):
    decoder = Decoder(WIDTH, HEADS, depth, 0.0)
    memory = torch.randn(2, 4, WIDTH, requires_grad=True)
    decoder(torch.randn(2, 3, WIDTH), decoder.keys_values(memory)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.parameters())
    assert memory.grad.abs().sum() > 0
