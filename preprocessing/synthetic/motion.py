"""Talking-head motion: FLAME expression/jaw/eye trajectories and head pose, frame by frame.

Everything is a smooth function of time built from sums of sines at speech-like rates (syllables
3–6 Hz, phrases 0.2–0.6 Hz, head sway 0.05–0.4 Hz), blink pulses every few seconds and gaze
fixations joined by quick saccades. Deterministic from a numpy Generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# named expression components of the stand-in head (model/procedural_head.py)
LIPS_APART, SMILE, PUCKER, BROW_RAISE, FURROW, BLINK, CHEEK_PUFF, SMIRK_LEFT, SMIRK_RIGHT, LIP_PRESS = range(10)


@dataclass(frozen=True)
class MotionLimits:
    """Ranges of the generated motion (radians unless named otherwise)."""

    max_jaw: float = 0.35  # jaw opening (positive x rotation of FLAME pose[3])
    max_yaw: float = math.radians(30.0)
    max_pitch: float = math.radians(15.0)
    max_roll: float = math.radians(8.0)
    max_translation: float = 0.08  # world units (FLAME ×5) sideways/up; ×3 along the view axis
    blink_amplitude: float = 1.6  # expression[5] at a full blink (closes the stand-in head's lids)
    max_gaze_yaw: float = 0.35
    max_gaze_pitch: float = 0.2


@dataclass
class ClipMotion:
    """Per-frame parameters of one clip of K frames.

    expression [K,100]; pose [K,6] (global rotation zero, jaw axis-angle); eyes [K,6] (both
    eyeballs' axis-angles); head_euler [K,3] (yaw, pitch, roll) radians, see
    ``model.geometry.euler_to_matrix``; translation [K,3] world units. All float32.
    """

    expression: np.ndarray
    pose: np.ndarray
    eyes: np.ndarray
    head_euler: np.ndarray
    translation: np.ndarray


def smooth_noise(rng: np.random.Generator, t: np.ndarray, low_hz: float, high_hz: float, terms: int = 4) -> np.ndarray:
    """Zero-mean, ≈ unit-variance band-limited noise [K] at times t [K] (seconds): a sum of
    ``terms`` sines with frequencies uniform in [low_hz, high_hz] and random phases/amplitudes."""
    freqs = rng.uniform(low_hz, high_hz, terms)
    phases = rng.uniform(0.0, 2 * np.pi, terms)
    amps = rng.normal(0.0, 1.0, terms)
    amps = amps / math.sqrt(max((amps**2).sum() / 2.0, 1e-6))
    return (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * t[None] + phases[:, None])).sum(0)


def _pulses(rng: np.random.Generator, t: np.ndarray, mean_interval: float, min_interval: float,
            duration: float) -> np.ndarray:
    """Smooth 0→1→0 bumps [K] of the given duration (seconds) at random times: blinks."""
    out = np.zeros_like(t)
    start = rng.uniform(0.2, mean_interval)
    times = []
    while start < t[-1] + duration:
        times.append(start)
        start += min_interval + rng.exponential(mean_interval - min_interval)
    for t0 in times:
        x = (t - t0) / duration
        inside = (x > 0) & (x < 1)
        # fast close (first third), slower open
        bump = np.where(x < 1 / 3, np.sin(np.pi * 1.5 * x) ** 2, np.cos(np.pi * 0.75 * (x - 1 / 3)) ** 2)
        out = np.maximum(out, np.where(inside, bump, 0.0))
    return out


def _fixations(rng: np.random.Generator, t: np.ndarray, scale: float, limit: float) -> np.ndarray:
    """Piecewise-constant gaze targets (0.3–1.5 s each) joined by ~60 ms saccades → [K]."""
    out = np.zeros_like(t)
    start, value = 0.0, float(np.clip(rng.normal(0.0, scale), -limit, limit))
    segments = []
    while start <= t[-1]:
        length = rng.uniform(0.3, 1.5)
        segments.append((start, value))
        start += length
        value = float(np.clip(rng.normal(0.0, scale), -limit, limit))
    prev = segments[0][1]
    for s, v in segments:
        ramp = np.clip((t - s) / 0.06, 0.0, 1.0)
        ramp = ramp * ramp * (3 - 2 * ramp)
        out = np.where(t >= s, prev + (v - prev) * ramp, out)
        prev = v
    return out


def sample_motion(rng: np.random.Generator, frames: int, fps: float, limits: MotionLimits | None = None
                  ) -> ClipMotion:
    """Draw one talking clip's trajectories (K = frames at ``fps``)."""
    lim = limits or MotionLimits()
    t = np.arange(frames) / fps
    soft = lambda x, m: m * np.tanh(x / m)  # smooth clamp into (−m, m)

    # speech: syllable-rate jaw motion gated by phrases (pauses when the gate closes)
    gate = 1.0 / (1.0 + np.exp(-(2.5 * smooth_noise(rng, t, 0.2, 0.6) + rng.uniform(0.5, 1.5))))
    syllables = np.clip(0.5 + 0.55 * smooth_noise(rng, t, 3.0, 6.0, terms=5), 0.0, 1.0) ** 1.3
    loud = rng.uniform(0.5, 1.0)
    jaw = lim.max_jaw * np.clip(loud * gate * syllables, 0.0, 1.0)
    talk = jaw / lim.max_jaw

    expression = np.zeros((frames, 100))
    expression[:, LIPS_APART] = 1.2 * talk + 0.15 * smooth_noise(rng, t, 1.0, 4.0)
    expression[:, SMILE] = np.clip(rng.normal(0.3, 0.5) + 0.6 * smooth_noise(rng, t, 0.1, 0.4), -1.0, 2.0)
    expression[:, PUCKER] = 0.8 * np.maximum(smooth_noise(rng, t, 0.3, 1.0) - 0.5, 0.0) * (1 - talk)
    expression[:, BROW_RAISE] = 0.6 * smooth_noise(rng, t, 0.15, 0.6) + 0.5 * gate * np.maximum(
        smooth_noise(rng, t, 0.5, 1.5), 0.0)
    expression[:, FURROW] = 0.8 * np.maximum(smooth_noise(rng, t, 0.1, 0.3), 0.0)
    expression[:, BLINK] = lim.blink_amplitude * _pulses(rng, t, mean_interval=3.0, min_interval=0.8, duration=0.24)
    expression[:, CHEEK_PUFF] = 0.5 * np.maximum(smooth_noise(rng, t, 0.1, 0.3) - 0.3, 0.0)
    expression[:, SMIRK_LEFT] = 0.6 * np.maximum(smooth_noise(rng, t, 0.1, 0.5) - 0.2, 0.0)
    expression[:, SMIRK_RIGHT] = 0.6 * np.maximum(smooth_noise(rng, t, 0.1, 0.5) - 0.2, 0.0)
    expression[:, LIP_PRESS] = 0.6 * np.maximum(smooth_noise(rng, t, 0.2, 0.8), 0.0) * (1 - talk)
    for k in range(10, 100):  # small local fields: slower and weaker for later components
        expression[:, k] = 0.5 / math.sqrt(k - 8) * smooth_noise(rng, t, 0.1, 2.0, terms=3)

    pose = np.zeros((frames, 6))
    pose[:, 3] = jaw
    pose[:, 4] = 0.015 * smooth_noise(rng, t, 0.2, 1.0)  # slight sideways jaw
    pose[:, 5] = 0.01 * smooth_noise(rng, t, 0.2, 1.0)

    gaze_yaw = _fixations(rng, t, lim.max_gaze_yaw / 2.5, lim.max_gaze_yaw)
    gaze_pitch = _fixations(rng, t, lim.max_gaze_pitch / 2.5, lim.max_gaze_pitch)
    eyes = np.zeros((frames, 6))
    for side in (0, 3):  # conjugate gaze: both eyes turn together (up = rotation about −x)
        eyes[:, side] = -gaze_pitch
        eyes[:, side + 1] = gaze_yaw

    # head: a per-clip mean direction, slow sway, nods that follow the speech
    yaw = rng.uniform(-0.5, 0.5) * lim.max_yaw + 0.45 * lim.max_yaw * smooth_noise(rng, t, 0.05, 0.4)
    pitch = (rng.uniform(-0.3, 0.3) * lim.max_pitch + 0.3 * lim.max_pitch * smooth_noise(rng, t, 0.1, 0.5)
             + 0.12 * lim.max_pitch * talk * smooth_noise(rng, t, 1.0, 2.5))
    roll = rng.uniform(-0.3, 0.3) * lim.max_roll + 0.35 * lim.max_roll * smooth_noise(rng, t, 0.05, 0.3)
    head_euler = np.stack([soft(yaw, lim.max_yaw), soft(pitch, lim.max_pitch), soft(roll, lim.max_roll)], 1)
    translation = np.stack([
        0.5 * lim.max_translation * smooth_noise(rng, t, 0.05, 0.3),
        0.5 * lim.max_translation * smooth_noise(rng, t, 0.05, 0.3),
        1.5 * lim.max_translation * smooth_noise(rng, t, 0.05, 0.2),
    ], 1)
    translation = soft(translation, np.array([1.0, 1.0, 3.0]) * lim.max_translation)
    f32 = lambda x: np.ascontiguousarray(x, dtype=np.float32)
    return ClipMotion(f32(expression), f32(pose), f32(eyes), f32(head_euler), f32(translation))
