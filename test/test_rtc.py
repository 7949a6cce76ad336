"""Real-time chunking trained in: a chunk's given prefix stays exactly as given, and training scores the rest."""

import dataclasses

import numpy as np
import pytest
import torch

from sop_ros.configs import ConfigError
from sop_ros.configs.model import ModelConfig
from sop_ros.model.vla import VLAPolicy

TIER = "unit"  # what the tests need: conftest.TIERS

TINY = ModelConfig(width=32, depth=1, head_depth=1, heads=2, cnn_channels=(8, 8, 8, 8), chunk=8, flow_steps=4,
                   rtc_max_prefix=4)  # fmt: skip


def inputs(batch: int, config: ModelConfig = TINY) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {
        "images": torch.rand(batch, config.cameras, 3, config.image_size, config.image_size),
        "proprio": torch.randn(batch, config.proprio_dim),
        "instruction": torch.randint(0, 256, (batch, config.instruction_bytes)),
        "indicator": torch.zeros(batch, dtype=torch.long),
    }


def policy(config: ModelConfig = TINY) -> VLAPolicy:
    torch.manual_seed(0)
    model = VLAPolicy(config).eval()
    model.set_normalisation((torch.zeros(9), torch.ones(9)), (torch.tensor([0.1, -0.2, 0.0, 0.5]),
                                                              torch.tensor([2.0, 0.5, 1.0, 4.0])))  # fmt: skip
    return model


def test_the_given_prefix_comes_back_exactly_and_the_rest_follows_on():
    model, x = policy(), inputs(2)
    noise = torch.randn(2, TINY.chunk, TINY.action_dim)
    prefix = torch.randn(2, TINY.chunk, TINY.action_dim)
    with torch.no_grad():
        plain = model.sample_actions(**x, noise=noise)
        chunk = model.sample_actions(**x, noise=noise, prefix=prefix, prefix_len=torch.tensor([3, 0]))
    assert torch.equal(chunk[0, :3], prefix[0, :3])  # row 0: its first three actions are the given ones
    assert not torch.allclose(chunk[0, 3:], plain[0, 3:])  # and the rest is conditioned on them
    torch.testing.assert_close(chunk[1], plain[1])  # row 1: no prefix, the plain chunk


def test_training_scores_only_the_actions_after_the_prefix():
    model = policy()
    batch = {**inputs(2), "actions": torch.randn(2, TINY.chunk, TINY.action_dim),
             "action_mask": torch.ones(2, TINY.chunk, dtype=torch.bool), "noise": torch.randn(2, TINY.chunk, 4),
             "flow_time": torch.tensor([0.3, 0.7]), "rtc_prefix": torch.tensor([2, 0])}  # fmt: skip
    losses, counted = model.sample_losses(batch)
    assert counted.tolist() == [TINY.chunk - 2, TINY.chunk]  # the two given actions of row 0 are not scored
    # By hand: row 0's first two actions enter clean at time 1, the rest noised at 0.3.
    target = (batch["actions"] - model.action_mean) / model.action_std
    t = torch.tensor([[1.0, 1.0] + [0.3] * (TINY.chunk - 2), [0.7] * TINY.chunk])
    noisy = t[..., None] * target + (1 - t[..., None]) * batch["noise"]
    context = model.head.keys_values(model.encode(batch["images"], batch["proprio"], batch["instruction"],
                                                  batch["indicator"]))  # fmt: skip
    error = ((model.velocity(noisy, t, context) - (target - batch["noise"])) ** 2).mean(dim=-1)
    torch.testing.assert_close(losses, torch.stack([error[0, 2:].mean(), error[1].mean()]))


def test_without_rtc_training_is_what_it_was():
    plain = dataclasses.replace(TINY, rtc_max_prefix=0)
    model = policy(plain)
    batch = {**inputs(2, plain), "actions": torch.randn(2, plain.chunk, plain.action_dim),
             "action_mask": torch.ones(2, plain.chunk, dtype=torch.bool), "noise": torch.randn(2, plain.chunk, 4),
             "flow_time": torch.tensor([0.3, 0.7]), "rtc_prefix": torch.tensor([2, 0])}  # fmt: skip
    _, counted = model.sample_losses(batch)
    assert counted.tolist() == [plain.chunk, plain.chunk]  # a prefix is for policies trained to take one


def test_the_prefix_must_leave_an_action_to_predict():
    with pytest.raises(ConfigError, match="rtc_max_prefix=8: must be in 0..chunk - 1"):
        dataclasses.replace(TINY, rtc_max_prefix=8)


def test_an_exported_rtc_policy_takes_the_prefix_through_onnx_runtime_and_torch_alike(tmp_path):
    import numpy as np

    from sop_ros.model.export import example_inputs, export_onnx, parity
    from sop_ros.model.policy import ChunkPolicy, Observation
    from sop_ros.model.runtime import OnnxRuntime, TorchRuntime
    from sop_ros.model.vla import save_checkpoint

    model = policy()
    save_checkpoint(tmp_path / "rtc.pt", model, version="rtc-1", cameras=["corner", "topview"])
    export_onnx(tmp_path / "rtc.pt", tmp_path / "rtc.onnx")
    assert parity(tmp_path / "rtc.pt", tmp_path / "rtc.onnx", example_inputs(model, 2, seed=3)) < 1e-4
    obs = Observation(np.random.default_rng(0).random((2, 3, 64, 64), np.float32), np.zeros(9, np.float32), "reach")
    prefix = np.arange(24, dtype=np.float32).reshape(6, 4) / 10  # six given: the policy takes its first four
    chunks = {}
    for name, runtime in (("onnx", OnnxRuntime(tmp_path / "rtc.onnx")), ("torch", TorchRuntime(tmp_path / "rtc.pt"))):
        assert runtime.inputs[-2:] == ("prefix", "prefix_len")
        chunk_policy = ChunkPolicy(runtime)
        chunks[name] = chunk_policy.infer(obs, prefix=prefix).actions
        np.testing.assert_allclose(chunks[name][:4], prefix[:4], atol=1e-6)
        chunk_policy.reset()
        assert not np.allclose(chunk_policy.infer(obs).actions[:4], prefix[:4])  # no prefix: its own start
    np.testing.assert_allclose(chunks["onnx"], chunks["torch"], atol=1e-4)


@pytest.mark.e2e
def test_rtc_check_scores_every_mode_at_every_delay_and_gives_each_chunk_the_actions_that_run_first(tmp_path,
                                                                                                     monkeypatch):
    """Stepped in process with a simulated delay of 3 control periods: every chunk an rtc arm asks for is given
    the three actions that run while it is computed, exactly those, and then takes over from them."""
    from conftest import REPO

    from sop_ros.fleet import rtc_check as module
    from sop_ros.model.policy import ChunkPolicy
    from sop_ros.model.vla import save_checkpoint

    save_checkpoint(tmp_path / "rtc.pt", policy(dataclasses.replace(TINY, chunk=16, rtc_max_prefix=8)),
                    version="rtc-1", cameras=["corner", "topview"])  # fmt: skip
    config = tmp_path / "sim_policy.yaml"  # short episodes
    config.write_text((REPO / "config" / "sim_policy.yaml").read_text().replace("max_episode_steps: 150",
                                                                                 "max_episode_steps: 30"))  # fmt: skip
    given = []
    infer = ChunkPolicy.infer

    def recording(self, obs, noise=None, prefix=None):
        result = infer(self, obs, noise, prefix)
        given.append((None if prefix is None else prefix.copy(), result.actions.copy()))
        return result

    monkeypatch.setattr(ChunkPolicy, "infer", recording)
    report = module.rtc_check(module.RtcCheckConfig(str(tmp_path / "rtc.pt"), ("reach-v3",), 1, (0.0, 100.0), 4,
                                                    str(config), 1, out=str(tmp_path / "out"),
                                                    results=str(tmp_path / "results")))  # fmt: skip
    arms = [f"{m} @ {d} ms" for d in (0, 100) for m in ("switch", "blend", "ensemble", "rtc")]
    assert list(report["arms"]) == arms and {a["delay_steps"] for a in report["arms"].values()} == {0, 3}
    for arm in report["arms"].values():  # 8 chunks an episode: 7 seams
        assert arm["seams"] >= 6 and 0 <= arm["seam_median"] <= arm["seam_p90"] <= arm["seam_max"]
    assert len(report["comparisons"]) == 6 and (tmp_path / "results" / "rtc.png").exists()
    # The last arm (rtc at 100 ms): its first chunk had nothing running before it; every later one was given the
    # three actions of the chunk before it that ran while it was computed, and begins with them.
    rtc_calls = given[-8:]  # 30 steps, a chunk every 4 of them: 8 asked for
    assert rtc_calls[0][0].shape == (0, 0)
    for (prefix, actions), (_, before) in zip(rtc_calls[1:], rtc_calls[:-1], strict=True):
        assert prefix.shape == (3, 4)
        np.testing.assert_allclose(actions[:3], prefix, atol=1e-6)
        np.testing.assert_allclose(prefix, before[4:7], atol=1e-6)  # asked 4 steps into the one before
    # Run again: every arm was kept as it ended, nothing is scored twice and the report is the same.
    calls = len(given)
    again = module.rtc_check(module.RtcCheckConfig(str(tmp_path / "rtc.pt"), ("reach-v3",), 1, (0.0, 100.0), 4,
                                                   str(config), 1, out=str(tmp_path / "out"),
                                                   results=str(tmp_path / "results")))  # fmt: skip
    assert len(given) == calls + 1 and again["arms"] == report["arms"]  # the one inference: the load's warm-up


def test_half_the_training_chunks_get_no_prefix_and_the_rest_one_to_the_longest():
    from sop_ros.model.vla import rtc_prefix_draw

    drawn = rtc_prefix_draw(10_000, TINY, torch.Generator().manual_seed(0))
    none = (drawn == 0).float().mean().item()
    assert 0.48 < none < 0.52 and set(drawn[drawn > 0].tolist()) == {1, 2, 3, 4}  # TINY: up to 4
    assert (rtc_prefix_draw(100, dataclasses.replace(TINY, rtc_no_prefix_share=1.0)) == 0).all()
    assert (rtc_prefix_draw(100, dataclasses.replace(TINY, rtc_no_prefix_share=0.0)) > 0).all()
