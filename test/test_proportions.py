"""The scoring statistics on cases worked by hand or published with their answers."""

import pytest

from sop_ros.fleet.proportions import Rate, bootstrap_difference, compare, episodes_needed, wilson_interval

TIER = "unit"  # what the tests need: conftest.TIERS


def test_wilson_interval_matches_the_hand_computed_values_and_stays_inside_0_1():
    # 50/100: centre (0.5 + 1.96^2/200) / (1 + 1.96^2/100) = 0.5, half-width 1.96 * 0.05095 / 1.0384 = 0.0962.
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    # 0/10: exactly 0 below, 2 * 0.19207 / 1.38415 = 0.2775 above (not 0 ± 0 as p ± 1.96 SE would say).
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0


def test_two_rates_are_compared_by_the_pooled_z_test_and_newcombes_interval():
    # 120/200 vs 100/200: pooled 0.55, SE sqrt(0.55 * 0.45 * 2/200) = 0.04975, z = 0.1 / 0.04975 = 2.010.
    c = compare(Rate(120, 200), Rate(100, 200))
    assert c.difference == pytest.approx(0.1) and c.z == pytest.approx(2.010, abs=1e-3)
    assert c.p_value == pytest.approx(0.0444, abs=1e-4) and c.beyond_noise
    # Newcombe (1998), method 10, his example: 56/70 vs 48/80 gives 0.0524 to 0.3339.
    assert compare(Rate(56, 70), Rate(48, 80)).interval == pytest.approx((0.0524, 0.3339), abs=1e-4)
    # 30 episodes an arm cannot see 10 points: 60% vs 50% is within noise.
    assert not compare(Rate(18, 30), Rate(15, 30)).beyond_noise
    assert compare(Rate(0, 30), Rate(0, 30)).p_value == 1.0


def test_episodes_needed_to_see_ten_points():
    # (1.96 sqrt(2 * 0.55 * 0.45) + 0.8416 sqrt(0.25 + 0.24))^2 / 0.1^2 = 387.3: 388 episodes an arm.
    assert episodes_needed(0.5, 0.6) == 388
    with pytest.raises(ValueError, match="equal rates"):
        episodes_needed(0.5, 0.5)


def test_bootstrap_resamples_whole_groups():
    assert bootstrap_difference([[True] * 10], [[False] * 10], resamples=100) == (1.0, 1.0)
    # One run that went perfectly and one that failed throughout: as groups, anything from -50 to +50 points.
    assert bootstrap_difference([[True, True], [False, False]], [[True, False]], resamples=2000) == (-0.5, 0.5)


def test_bad_counts_are_refused_naming_them():
    with pytest.raises(ValueError, match="at least one episode"):
        Rate(0, 0)
    with pytest.raises(ValueError, match="between 0 and the 10 episodes, got 11"):
        Rate(11, 10)
