"""The VLA model on plain tensors: it learns from its inputs, samples deterministically, and round-trips."""

import pytest
import torch

from sop_ros.configs import ConfigError
from sop_ros.configs.model import ModelConfig
from sop_ros.model.tokens import instruction_tokens
from sop_ros.model.value import ValueNetwork
from sop_ros.model.vla import VLAPolicy, load_checkpoint, parameter_count, save_checkpoint

TIER = "unit"  # what the tests need: conftest.TIERS

TINY = ModelConfig(cameras=1, image_size=32, cnn_channels=(8, 16), width=32, heads=2, depth=1, head_depth=1,
                   chunk=4, instruction_bytes=16, flow_steps=8)  # fmt: skip


def batch(texts, actions, config=TINY, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(texts)
    return {
        "images": torch.rand(n, config.cameras, 3, config.image_size, config.image_size, generator=g),
        "proprio": torch.zeros(n, config.proprio_dim),
        "instruction": torch.from_numpy(instruction_tokens(texts, config.instruction_bytes)),
        "indicator": torch.zeros(n, dtype=torch.long),
        "actions": actions,
        "action_mask": torch.ones(n, config.chunk, dtype=torch.bool),
    }


def sample(model, b, noise):
    with torch.no_grad():
        return model.sample_actions(b["images"], b["proprio"], b["instruction"], b["indicator"], noise)


def test_tokens_are_lowercase_bytes_padded_and_cut():
    tokens = instruction_tokens(["Open", "a" * 40], 8)
    assert tokens[0].tolist() == [ord("o") + 1, ord("p") + 1, ord("e") + 1, ord("n") + 1, 0, 0, 0, 0]
    assert (tokens[1] == ord("a") + 1).all()


def test_it_learns_to_act_on_the_instruction():
    """Two instructions, same images: only the text says which chunk to produce."""
    torch.manual_seed(0)
    model = VLAPolicy(TINY)
    targets = torch.stack([torch.full((TINY.chunk, 4), 0.8), torch.full((TINY.chunk, 4), -0.8)])
    texts = ["open the drawer", "close the drawer"] * 16
    b = batch(texts, targets.repeat(16, 1, 1))
    b["images"][:] = b["images"][:1]  # identical images: only the instruction differs
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    noise = torch.randn(2, TINY.chunk, 4, generator=torch.Generator().manual_seed(1))
    probe = {k: v[:2] for k, v in b.items()}
    before = (sample(model.eval(), probe, noise) - targets).abs().mean()
    model.train()
    for _ in range(300):
        loss = model.loss(b)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = (sample(model.eval(), probe, noise) - targets).abs().mean()
    assert after < 0.15 < before


def test_sampling_is_deterministic_for_the_noise_and_guidance_one_is_plain():
    torch.manual_seed(0)
    model = VLAPolicy(TINY).eval()
    b = batch(["reach the goal"] * 2, torch.zeros(2, TINY.chunk, 4))
    b["indicator"][:] = 2
    noise = torch.randn(2, TINY.chunk, 4)
    first = sample(model, b, noise)
    assert torch.equal(first, sample(model, b, noise)) and first.shape == (2, TINY.chunk, 4)
    with torch.no_grad():
        args = (b["images"], b["proprio"], b["instruction"], b["indicator"], noise)
        assert torch.allclose(model.sample_actions(*args, guidance=1.0), first)
        assert not torch.allclose(model.sample_actions(*args, guidance=2.0), first)


def test_checkpoint_round_trip_keeps_outputs_and_normalisation(tmp_path):
    torch.manual_seed(0)
    model = VLAPolicy(TINY).eval()
    model.set_normalisation(([0.5] * 9, [2.0] * 9), ([0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 2.0, 2.0]))
    b = batch(["push the puck"], torch.zeros(1, TINY.chunk, 4))
    noise = torch.randn(1, TINY.chunk, 4)
    save_checkpoint(tmp_path / "p.pt", model, version="v7", tasks=["push-v3"])
    loaded, extra = load_checkpoint(tmp_path / "p.pt")
    assert extra == {"version": "v7", "tasks": ["push-v3"]} and loaded.config == TINY
    assert torch.equal(sample(loaded, b, noise), sample(model, b, noise))


def test_size_is_configurable_and_checked():
    assert parameter_count(VLAPolicy(ModelConfig(width=64, heads=4))) < parameter_count(VLAPolicy(ModelConfig()))
    with pytest.raises(ConfigError, match="image_size=100: must be divisible by"):
        ModelConfig(image_size=100)
    with pytest.raises(ConfigError, match="width=130: must be divisible by heads"):
        ModelConfig(width=130)


def test_each_rows_loss_counts_only_its_actions_inside_the_episode():
    torch.manual_seed(0)
    model = VLAPolicy(TINY).eval()
    b = batch(["reach", "push", "open"], torch.randn(3, TINY.chunk, TINY.action_dim))
    b["action_mask"][1, 2:] = False  # row 1's episode ends after 2 of its 4 actions
    torch.manual_seed(1)
    losses, actions = model.sample_losses(b)
    assert actions.tolist() == [4, 2, 4] and losses.shape == (3,)
    torch.manual_seed(1)  # the same noise and flow times: the batch loss is the action-weighted mean of the rows'
    assert model.loss(b).item() == pytest.approx(((losses * actions).sum() / 10).item(), rel=1e-6)
    whole = {**b, "action_mask": torch.ones_like(b["action_mask"])}
    torch.manual_seed(1)
    unmasked = model.sample_losses(whole)[0]
    assert unmasked[[0, 2]].tolist() == pytest.approx(losses[[0, 2]].tolist(), rel=1e-6)  # one row's mask is its own
    assert unmasked[1].item() != pytest.approx(losses[1].item(), rel=1e-3)


def test_the_value_network_learns_returns_as_a_distribution_over_atoms():
    torch.manual_seed(0)
    network = ValueNetwork(TINY, bins=21)
    texts = ["reach the goal", "push the puck"] * 8
    rows = batch(texts, torch.zeros(16, TINY.chunk, TINY.action_dim))
    target = torch.tensor([18, 2] * 8)  # atoms -0.1 and -0.9 of 21 on [-1, 0]
    optimiser = torch.optim.Adam(network.parameters(), lr=3e-3)
    first = network.loss(rows, target).item()
    for _ in range(150):
        optimiser.zero_grad()
        loss = network.loss(rows, target)
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.2 * first
    with torch.no_grad():
        values = network.value(rows["images"], rows["proprio"], rows["instruction"])
    assert values[0].item() > -0.25 and values[1].item() < -0.75
    probabilities = torch.softmax(network.logits(rows["images"], rows["proprio"], rows["instruction"]), -1)
    assert values[:2].tolist() == pytest.approx((probabilities[:2] @ torch.linspace(-1, 0, 21)).tolist(), abs=1e-5)
