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


def test_three_cornered_hat_names_each_estimates_own_noise():
    from bench.tracking_real import three_cornered_hat

    rng = np.random.default_rng(2)
    truth = 10.0 * np.sin(np.linspace(0, 12, 3000))  # the head's motion is common to all three
    got = three_cornered_hat(truth + rng.normal(0, 0.5, 3000), truth + 3.0 + rng.normal(0, 1.0, 3000),
                             truth + rng.normal(0, 2.0, 3000))
    assert abs(got["a"] - 0.5) < 0.15 and abs(got["b"] - 1.0) < 0.1 and abs(got["c"] - 2.0) < 0.1
    # a and c sharing one error of σ 1.5: both read as less noisy, b is charged with it
    shared = rng.normal(0, 1.5, 3000)
    got = three_cornered_hat(truth + shared + rng.normal(0, 0.5, 3000), truth + rng.normal(0, 1.0, 3000),
                             truth + shared + rng.normal(0, 0.5, 3000))
    assert got["b"] > 1.6 and got["a"] < 0.7


def test_hat_report_compares_the_frames_that_all_three_estimates_share():
    from bench.tracking_real import hat_report

    rng = np.random.default_rng(3)
    n = 60
    truth = np.stack([8 * np.sin(np.arange(n) / 5), 3 * np.cos(np.arange(n) / 7), np.zeros(n)], 1)
    found = np.ones(n, bool)
    found[:5] = False  # the independent estimator missed the first 5 frames
    after = {"frame_ids": np.arange(n), "found": found, "ours": truth + rng.normal(0, 0.2, (n, 3)),
             "ind": truth[found] + rng.normal(0, 1.0, (found.sum(), 3))}
    kept = np.arange(0, n, 2)  # the dlib variant kept every other frame
    after_dlib = {"frame_ids": kept, "found": np.ones(len(kept), bool), "ours": truth[kept] + rng.normal(0, 0.6, (len(kept), 3))}
    report = hat_report({"c.mp4": after}, {"c.mp4": after_dlib, "gone.mp4": {}}, ["c.mp4", "gone.mp4"])
    clip = report["per_clip"]["c.mp4"]
    assert clip["frames"] == len(np.intersect1d(np.arange(5, n), kept)) and "gone.mp4" not in report["per_clip"]
    assert clip["pitch"]["ours_mediapipe"] < clip["pitch"]["ours_dlib"] < clip["pitch"]["independent"]
    assert report["summary"]["yaw"]["clips_ours_mediapipe_below_independent"] == "1/1"
