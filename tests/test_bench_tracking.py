"""The real-video tracking bench's split of a clip's disagreement into frame-to-frame noise and
what persists (bench.tracking_real._noise_split), on series with known noise."""

from __future__ import annotations

import numpy as np

from bench.tracking_real import _noise_split


def test_white_noise_of_the_independent_estimate_is_named_as_its_noise_not_a_slow_error():
    rng = np.random.default_rng(0)
    t = np.arange(400) * 0.2
    truth = 8.0 * np.sin(2 * np.pi * t / 6.0)  # a head turning ±8° every 6 s, sampled every 0.2 s
    ours = truth + rng.normal(0, 0.2, t.size)
    ind = truth + rng.normal(0, 1.5, t.size)
    split = _noise_split(ours, ind, offset=0.0)
    assert abs(split["jitter"]["independent"] - 1.5) < 0.2 and split["jitter"]["ours"] < 0.5
    assert abs(split["independent_noise_beyond_ours"] - 1.5) < 0.25
    assert split["median_abs_slow"] < 0.5  # noise averages out over a second; nothing systematic


def test_a_lasting_error_of_ours_shows_in_the_slow_part_and_ours_reads_noisier():
    rng = np.random.default_rng(1)
    truth = np.zeros(200)
    ind = truth + rng.normal(0, 0.3, 200)
    ours = truth + rng.normal(0, 1.0, 200)
    ours[60:] += 4.0  # off by 4° for the last 70% of the clip
    split = _noise_split(ours, ind, offset=0.0)
    assert split["median_abs_slow"] > 3.0
    assert split["independent_noise_beyond_ours"] < -0.8
