"""Synthetic fine-grained audio-visual clips (real mp4 files) with their ground truth.

Owns `generate(...)`, `python -m deteclap.synth OUT --clips N ...` and `make_broken_files(...)`.

Each clip shows and/or plays one object of a fine class. Fine classes are grouped in
super-categories (animal, instrument, vehicle) that share a colour palette and a sound family; the
fine classes differ in details (shape, texture, motion; pitch contour, rhythm, harmonics). Every
clip draws random jitter of colour, position, size, pitch, loudness and background noise, so the
fine class is learnable but not trivial. Distractors: seen-only objects (Person, Tree, Building)
and heard-only sounds (Clock ticking, Alarm clock beeping). The class object is usually both seen
and heard, sometimes only heard or only seen.

Difficulty (`difficulty` in [0, 1], `--difficulty`; 1, the default, is the full set described
above): it scales the nuisances that do not depend on the class, leaving the class cues as they are:
- the chance that the class object is only heard (0.15 x d) or only seen (0.15 x d): such a clip's
  pair carries no class evidence in one modality;
- how many seen-only distractors a picture may hold (0 .. round(2 x d)) and the chance of a heard-only
  distractor (0.5 x d);
- the pixel noise of the frames (standard deviation drawn from 2 .. 2 + 8 x d).
At d = 0 every clip shows and plays its object alone on a gradient background. The random draws
are the same at every difficulty (only their use changes), so d = 1 gives the files it always gave.

Files: `OUT/{id}.mp4` (H.264 yuv420p via libx264 + AAC stereo; the right channel is a different
mix of the sources than the left, so "first channel" differs from a down-mix) and
`OUT/truth.jsonl`, one line per clip: {"file", "id", "class", "super_class", "seen", "heard"}
(also a valid `deteclap.shard` manifest). Output is deterministic from the seed: clip i draws from
its own generator seeded with (seed, i), whatever the worker count.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

DEFAULT_SIZE = (160, 120)            # width, height
DEFAULT_FPS = 10
DEFAULT_SECONDS = 10.0
SAMPLE_RATE = 22050                  # not 16 kHz on purpose: the shard writer must resample
AUDIO_CHANNELS = 2
AAC_FRAME_SAMPLES = 1024
AAC_BITRATE = 64_000
# libx264 with its assembly kernels gave different bytes from run to run on the same input
# (measured with PyAV 18); the C paths at preset ultrafast are deterministic and as fast.
X264_OPTIONS = {"crf": "23", "preset": "ultrafast", "threads": "1", "x264-params": "asm=0"}
TRUTH_FILE = "truth.jsonl"

# Probabilities of how the class object appears in a clip, and the distractors, at difficulty 1
# (each is multiplied by the difficulty; see the module doc).
P_CLASS_HEARD_ONLY = 0.15
P_CLASS_SEEN_ONLY = 0.15
MAX_SEEN_DISTRACTORS = 2
P_HEARD_DISTRACTOR = 0.5
FRAME_NOISE_STD = (2.0, 10.0)        # pixel noise std drawn from this range (upper end scaled)
DEFAULT_DIFFICULTY = 1.0

# Super-category -> (hue centre in [0, 1), fine classes). All names are OIV7 classes.
SUPER_CLASSES: dict[str, tuple[float, tuple[str, ...]]] = {
    "Animal": (0.08, ("Dog", "Cat", "Bird", "Horse", "Sheep")),
    "Musical instrument": (0.66, ("Guitar", "Piano", "Drum", "Violin", "Trumpet")),
    "Vehicle": (0.35, ("Car", "Train", "Airplane", "Motorcycle", "Helicopter")),
}
SEEN_DISTRACTORS = ("Person", "Tree", "Building")
HEARD_DISTRACTORS = ("Clock", "Alarm clock")
HUE_JITTER = 0.05

# Within a super-category the 5 fine classes use these visual details, by position.
SHAPES = ("circle", "square", "triangle", "diamond", "ring")
TEXTURES = ("solid", "hstripes", "vstripes", "checker", "dots")
MOTIONS = ("linear", "orbit", "bounce", "jitter", "zigzag")


def class_names() -> list[str]:
    """All fine class names, super-category by super-category."""
    return [name for _, names in SUPER_CLASSES.values() for name in names]


def object_names() -> list[str]:
    """Every object a synthetic clip can show or sound (the fine classes, then the distractors): the
    label vocabulary that fits this data (`python -m deteclap.label --vocabulary`)."""
    return class_names() + list(SEEN_DISTRACTORS) + list(HEARD_DISTRACTORS)


def super_class_of(name: str) -> str:
    for super_name, (_, names) in SUPER_CLASSES.items():
        if name in names:
            return super_name
    raise KeyError(f"unknown synthetic class {name!r}")


# ----------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------

def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (all in [0, 1]) -> float32 RGB [3] in [0, 255]."""
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, np.float32) * 255.0


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask [H, W] of a shape of radius r, given pixel offsets from its centre."""
    if shape == "circle":
        return dx * dx + dy * dy < r * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) < r * 0.85
    if shape == "triangle":
        return (dy > -r) & (dy < r) & (np.abs(dx) < (dy + r) * 0.6)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) < r * 1.2
    if shape == "ring":
        dist2 = dx * dx + dy * dy
        return (dist2 < r * r) & (dist2 > (0.55 * r) ** 2)
    raise ValueError(f"unknown shape {shape!r}")


def _texture(texture: str, dx: np.ndarray, dy: np.ndarray, period: float) -> np.ndarray:
    """Float mask [H, W] in {0, 1}: where the texture darkens the object."""
    if texture == "solid":
        return np.zeros_like(dx)
    if texture == "hstripes":
        return (np.floor(dy / period) % 2).astype(np.float32)
    if texture == "vstripes":
        return (np.floor(dx / period) % 2).astype(np.float32)
    if texture == "checker":
        return ((np.floor(dx / period) + np.floor(dy / period)) % 2).astype(np.float32)
    if texture == "dots":
        mx, my = (dx / period) % 2 - 1, (dy / period) % 2 - 1
        return (mx * mx + my * my < 0.35).astype(np.float32)
    raise ValueError(f"unknown texture {texture!r}")


def _trajectory(motion: str, times: np.ndarray, rng: np.random.Generator,
                width: int, height: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Object centre (x [T], y [T]) in pixels for each frame time."""
    x0 = rng.uniform(radius, width - radius)
    y0 = rng.uniform(radius, height - radius)
    speed = rng.uniform(0.6, 1.4)
    if motion == "linear":
        direction = rng.choice([-1.0, 1.0])
        x = x0 + direction * speed * 8.0 * times
        y = np.full_like(times, y0)
    elif motion == "orbit":
        orbit = min(width, height) * 0.2
        x = width / 2 + orbit * np.cos(speed * times * 1.5)
        y = height / 2 + orbit * np.sin(speed * times * 1.5)
    elif motion == "bounce":
        x = np.full_like(times, x0)
        y = y0 - np.abs(np.sin(speed * times * 2.0)) * height * 0.25
    elif motion == "jitter":
        x = x0 + rng.normal(0, 1.5, times.shape)
        y = y0 + rng.normal(0, 1.5, times.shape)
    elif motion == "zigzag":
        x = x0 + speed * 6.0 * times
        y = y0 + (2 * np.abs((speed * times) % 2 - 1) - 1) * height * 0.15
    else:
        raise ValueError(f"unknown motion {motion!r}")
    # Wrap / clamp into the picture so the object stays visible.
    span_x = max(width - 2 * radius, 1.0)
    x = radius + np.abs((x - radius) % (2 * span_x) - span_x)
    y = np.clip(y, radius, height - radius)
    return x, y


@dataclass
class _Sprite:
    """A drawable object: colour [3], darker texture colour [3], shape, texture, path."""
    color: np.ndarray
    shade: np.ndarray
    shape: str
    texture: str
    radius: float
    xs: np.ndarray
    ys: np.ndarray
    period: float


def _class_sprite(name: str, rng: np.random.Generator, times: np.ndarray,
                  width: int, height: int) -> _Sprite:
    super_name = super_class_of(name)
    hue, names = SUPER_CLASSES[super_name]
    position = names.index(name)
    h = (hue + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 1.0
    color = _hsv_to_rgb(h, rng.uniform(0.55, 0.9), rng.uniform(0.6, 0.95))
    shade = color * rng.uniform(0.45, 0.65)
    radius = min(width, height) * rng.uniform(0.14, 0.22)
    xs, ys = _trajectory(MOTIONS[position], times, rng, width, height, radius)
    return _Sprite(color, shade, SHAPES[position], TEXTURES[position], radius, xs, ys,
                   period=radius * rng.uniform(0.25, 0.4))


def _draw_sprite(canvas: np.ndarray, sprite: _Sprite, frame: int, xx: np.ndarray, yy: np.ndarray) -> None:
    dx, dy = xx - sprite.xs[frame], yy - sprite.ys[frame]
    mask = _shape_mask(sprite.shape, dx, dy, sprite.radius)
    tex = _texture(sprite.texture, dx, dy, sprite.period)[..., None]
    colour = sprite.color * (1 - tex) + sprite.shade * tex
    canvas[mask] = colour[mask]


def _draw_distractor(canvas: np.ndarray, name: str, params: dict, xx: np.ndarray, yy: np.ndarray) -> None:
    """Seen-only distractors: simple static figures, drawn with masks."""
    x, y, s = params["x"], params["y"], params["scale"]
    if name == "Person":
        head = (xx - x) ** 2 + (yy - (y - 1.6 * s)) ** 2 < (0.45 * s) ** 2
        body = (np.abs(xx - x) < 0.5 * s) & (yy > y - 1.1 * s) & (yy < y + 1.2 * s)
        canvas[body] = params["shirt"]
        canvas[head] = (224.0, 172.0, 140.0)
    elif name == "Tree":
        trunk = (np.abs(xx - x) < 0.2 * s) & (yy > y) & (yy < y + 1.5 * s)
        canopy = (xx - x) ** 2 + (yy - (y - 0.4 * s)) ** 2 < (0.9 * s) ** 2
        canvas[trunk] = (101.0, 67.0, 33.0)
        canvas[canopy] = (34.0, 120.0, 40.0)
    elif name == "Building":
        block = (np.abs(xx - x) < 0.8 * s) & (yy > y - 1.5 * s) & (yy < y + 1.5 * s)
        windows = block & ((np.floor((xx - x) / (0.3 * s)) % 2) == 0) & ((np.floor(yy / (0.3 * s)) % 2) == 0)
        canvas[block] = (128.0, 128.0, 136.0)
        canvas[windows] = (230.0, 230.0, 160.0)
    else:
        raise ValueError(f"unknown seen distractor {name!r}")


# ----------------------------------------------------------------------------------------------
# Sounds (mono float64 [samples], peak about 1)
# ----------------------------------------------------------------------------------------------

def _harmonics(f0: np.ndarray, sample_rate: int, weights: list[float]) -> np.ndarray:
    """Sum of harmonics k * f0(t) with the given weights; f0 in Hz per sample."""
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    nyquist = sample_rate / 2
    out = np.zeros_like(f0)
    for k, weight in enumerate(weights, start=1):
        out += weight * np.sin(k * phase) * (k * f0 < nyquist)
    return out


def _events(n: int, sample_rate: int, onsets: np.ndarray, length_s: float,
            attack_s: float = 0.01, decay: float = 0.0) -> np.ndarray:
    """Envelope [n]: a note of length_s at each onset (s), linear attack, optional exp decay."""
    env = np.zeros(n)
    length = int(length_s * sample_rate)
    local = np.arange(length) / sample_rate
    shape = np.minimum(local / max(attack_s, 1e-4), 1.0)
    shape *= np.exp(-decay * local) if decay > 0 else np.minimum((length_s - local) / 0.02, 1.0)
    for onset in onsets:
        start = int(onset * sample_rate)  # jitter can put an onset before 0: keep the note's tail
        lo, hi = max(start, 0), min(start + length, n)
        if lo < hi:
            env[lo:hi] = np.maximum(env[lo:hi], shape[lo - start: hi - start])
    return env


def _onsets(rng: np.random.Generator, seconds: float, period: float, jitter: float = 0.1) -> np.ndarray:
    start = rng.uniform(0, period)
    onsets = np.arange(start, seconds, period)
    return onsets + rng.uniform(-jitter, jitter, onsets.shape) * period


def _lowpass_noise(rng: np.random.Generator, n: int, smooth: int) -> np.ndarray:
    noise = rng.normal(0, 1, n)
    if smooth > 1:
        kernel = np.ones(smooth) / smooth
        noise = np.convolve(noise, kernel, mode="same") * np.sqrt(smooth)
    return noise


def _class_sound(name: str, rng: np.random.Generator, seconds: float, sample_rate: int) -> np.ndarray:
    """The fine class's sound; the family is shared within a super-category."""
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    pitch = rng.uniform(0.88, 1.12)              # per-clip pitch jitter
    ones = np.ones(n)
    # Animals: voiced calls (harmonic series), differing in pitch contour and rhythm.
    if name == "Dog":
        env = _events(n, sample_rate, _onsets(rng, seconds, 0.55), 0.15, decay=12)
        f0 = 420 * pitch * (1.2 - 0.4 * ((t % 0.55) / 0.55))
        return env * _harmonics(f0, sample_rate, [1, 0.8, 0.6, 0.4, 0.3])
    if name == "Cat":
        env = _events(n, sample_rate, _onsets(rng, seconds, 2.0), 0.9, attack_s=0.15)
        phase = (t % 2.0) / 0.9
        f0 = 620 * pitch * (1 + 0.3 * np.sin(np.pi * np.clip(phase, 0, 1)))
        return env * _harmonics(f0, sample_rate, [1, 0.5, 0.3, 0.15])
    if name == "Bird":
        env = _events(n, sample_rate, _onsets(rng, seconds, 0.18, 0.3), 0.08)
        f0 = 2600 * pitch * (1 + 0.5 * ((t % 0.18) / 0.18))
        return env * _harmonics(f0, sample_rate, [1, 0.2])
    if name == "Horse":
        env = _events(n, sample_rate, _onsets(rng, seconds, 2.5), 1.3, attack_s=0.05, decay=1.2)
        f0 = 800 * pitch * (1 - 0.35 * ((t % 2.5) / 2.5)) * (1 + 0.06 * np.sin(2 * np.pi * 9 * t))
        return env * _harmonics(f0, sample_rate, [1, 0.7, 0.5, 0.3])
    if name == "Sheep":
        env = _events(n, sample_rate, _onsets(rng, seconds, 1.6), 0.7, attack_s=0.05)
        env *= 0.6 + 0.4 * np.sin(2 * np.pi * 24 * t)
        return env * _harmonics(330 * pitch * ones, sample_rate, [1, 0.7, 0.5, 0.4, 0.2])
    # Instruments: notes of a scale, differing in attack, decay, vibrato and harmonics.
    scale = 220 * pitch * 2 ** (np.array([0, 2, 4, 5, 7, 9, 11, 12]) / 12)
    note_period = rng.uniform(0.4, 0.6)
    notes = scale[rng.integers(0, len(scale), int(seconds / note_period) + 2)]
    f0_notes = notes[np.minimum((t / note_period).astype(int), len(notes) - 1)]
    onsets = np.arange(0, seconds, note_period)
    if name == "Guitar":
        env = _events(n, sample_rate, onsets, note_period, attack_s=0.003, decay=6)
        return env * _harmonics(f0_notes, sample_rate, [1 / k for k in range(1, 7)])
    if name == "Piano":
        env = _events(n, sample_rate, onsets, note_period, attack_s=0.002, decay=3)
        return env * (_harmonics(f0_notes, sample_rate, [1, 0.5, 0.35, 0.2])
                      + 0.5 * _harmonics(f0_notes * 1.5, sample_rate, [1, 0.3]))
    if name == "Drum":
        env = _events(n, sample_rate, onsets / 2, 0.2, attack_s=0.001, decay=25)
        thump = _harmonics(90 * pitch * ones, sample_rate, [1])
        return env * (0.7 * thump + 0.5 * _lowpass_noise(rng, n, 4))
    if name == "Violin":
        env = _events(n, sample_rate, onsets, note_period, attack_s=0.12)
        f0 = 2 * f0_notes * (1 + 0.01 * np.sin(2 * np.pi * 6 * t))
        return env * _harmonics(f0, sample_rate, [1 / k for k in range(1, 10)])
    if name == "Trumpet":
        env = _events(n, sample_rate, onsets, note_period * 0.8, attack_s=0.02)
        return env * _harmonics(f0_notes, sample_rate, [0.6, 1, 0.9, 0.7, 0.5, 0.4, 0.3])
    # Vehicles: engines and rumbles, differing in rate, modulation and noise colour.
    rumble = _lowpass_noise(rng, n, 40)
    if name == "Car":
        f0 = 45 * pitch * (1 + 0.2 * np.sin(2 * np.pi * 0.15 * t))
        return 0.6 * _harmonics(f0, sample_rate, [1, 0.8, 0.6, 0.5, 0.4, 0.3]) + 0.3 * rumble
    if name == "Train":
        clack = _events(n, sample_rate, np.concatenate([onsets * 1.6, onsets * 1.6 + 0.12]), 0.05, decay=60)
        return 0.5 * rumble + clack * _lowpass_noise(rng, n, 3)
    if name == "Airplane":
        whine = _harmonics(1900 * pitch * (1 + 0.05 * t / seconds) * ones, sample_rate, [1])
        return 0.7 * _lowpass_noise(rng, n, 8) * (0.6 + 0.4 * t / seconds) + 0.15 * whine
    if name == "Motorcycle":
        f0 = 95 * pitch * (1 + 0.35 * np.abs(np.sin(2 * np.pi * 0.3 * t)))
        return 0.5 * _harmonics(f0, sample_rate, [1, 1, 0.8, 0.8, 0.6, 0.5, 0.4]) + 0.2 * rumble
    if name == "Helicopter":
        chop = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * 12 * pitch * t))
        return chop * (0.6 * rumble + 0.3 * _lowpass_noise(rng, n, 6))
    raise ValueError(f"unknown synthetic class {name!r}")


def _distractor_sound(name: str, rng: np.random.Generator, seconds: float, sample_rate: int) -> np.ndarray:
    n = int(round(seconds * sample_rate))
    ones = np.ones(n)
    if name == "Clock":
        env = _events(n, sample_rate, np.arange(rng.uniform(0, 0.5), seconds, 0.5), 0.02, decay=200)
        return env * _harmonics(2000 * ones, sample_rate, [1, 0.5])
    if name == "Alarm clock":
        env = _events(n, sample_rate, np.arange(rng.uniform(0, 0.25), seconds, 0.25), 0.12)
        return 0.6 * env * _harmonics(2800 * ones, sample_rate, [1, 0, 0.33, 0, 0.2])
    raise ValueError(f"unknown heard distractor {name!r}")


# ----------------------------------------------------------------------------------------------
# One clip
# ----------------------------------------------------------------------------------------------

@dataclass
class ClipSpec:
    index: int
    class_name: str
    out_dir: str
    seconds: float
    seed: int
    width: int
    height: int
    fps: int
    sample_rate: int
    difficulty: float = DEFAULT_DIFFICULTY


def clip_id(index: int) -> str:
    return f"synth_{index:05d}"


def render_clip(spec: ClipSpec) -> tuple[np.ndarray, np.ndarray, dict]:
    """Draw one clip: frames uint8 [T, H, W, 3], stereo audio float32 [2, samples], truth row."""
    rng = np.random.default_rng([spec.seed, spec.index])
    width, height = spec.width, spec.height
    n_frames = max(int(round(spec.seconds * spec.fps)), 1)
    times = np.arange(n_frames) / spec.fps
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    d = spec.difficulty
    roll = rng.uniform()
    heard_only, seen_only = P_CLASS_HEARD_ONLY * d, P_CLASS_SEEN_ONLY * d
    class_seen = roll >= heard_only
    class_heard = roll < heard_only or roll >= heard_only + seen_only
    max_seen = int(round(MAX_SEEN_DISTRACTORS * d))
    seen_names = list(rng.choice(SEEN_DISTRACTORS, rng.integers(0, max_seen + 1), replace=False))
    heard_names = list(rng.choice(HEARD_DISTRACTORS, 1)) if rng.uniform() < P_HEARD_DISTRACTOR * d else []

    # Pictures: background gradient + noise, distractors behind, the class object in front.
    top = _hsv_to_rgb(rng.uniform(), rng.uniform(0.05, 0.3), rng.uniform(0.3, 0.8))
    bottom = _hsv_to_rgb(rng.uniform(), rng.uniform(0.05, 0.3), rng.uniform(0.3, 0.8))
    ramp = (yy / max(height - 1, 1))[..., None]
    background = top * (1 - ramp) + bottom * ramp
    distractors = [(name, {"x": rng.uniform(0.1, 0.9) * width, "y": rng.uniform(0.3, 0.7) * height,
                           "scale": min(width, height) * rng.uniform(0.1, 0.16),
                           "shirt": _hsv_to_rgb(rng.uniform(), 0.7, 0.8)}) for name in seen_names]
    scene = background.copy()
    for name, params in distractors:
        _draw_distractor(scene, name, params, xx, yy)
    sprite = _class_sprite(spec.class_name, rng, times, width, height) if class_seen else None
    low, high = FRAME_NOISE_STD
    noise_level = rng.uniform(low, low + (high - low) * d)
    frames = np.empty((n_frames, height, width, 3), np.uint8)
    for i in range(n_frames):
        canvas = scene.copy()
        if sprite is not None:
            _draw_sprite(canvas, sprite, i, xx, yy)
        canvas += rng.normal(0, noise_level, canvas.shape).astype(np.float32)
        frames[i] = np.clip(canvas, 0, 255).astype(np.uint8)

    # Sounds: each source panned at random; independent background noise per channel.
    sources = []
    if class_heard:
        sources.append(_class_sound(spec.class_name, rng, spec.seconds, spec.sample_rate) * rng.uniform(0.3, 0.6))
    for name in heard_names:
        sources.append(_distractor_sound(name, rng, spec.seconds, spec.sample_rate) * rng.uniform(0.1, 0.3))
    n_samples = int(round(spec.seconds * spec.sample_rate))
    noise_amp = rng.uniform(0.005, 0.03)
    audio = rng.normal(0, noise_amp, (AUDIO_CHANNELS, n_samples))
    for source in sources:
        pan = rng.uniform(0.1, 0.9)
        audio[0] += np.sqrt(1 - pan) * source
        audio[1] += np.sqrt(pan) * source
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)

    truth = {
        "file": f"{clip_id(spec.index)}.mp4",
        "id": clip_id(spec.index),
        "class": spec.class_name,
        "super_class": super_class_of(spec.class_name),
        "seen": ([spec.class_name] if class_seen else []) + sorted(seen_names),
        "heard": ([spec.class_name] if class_heard else []) + sorted(heard_names),
    }
    return frames, audio, truth


def write_mp4(path: Path, frames: np.ndarray | None, audio: np.ndarray | None, fps: int,
              sample_rate: int) -> None:
    """Write H.264 (libx264, yuv420p) video [T, H, W, 3] uint8 and/or AAC audio [C, samples]."""
    import av

    with av.open(str(path), mode="w", format="mp4") as container:
        video = audio_stream = None
        if frames is not None:
            video = container.add_stream("libx264", rate=fps)
            video.height, video.width = frames.shape[1:3]
            video.pix_fmt = "yuv420p"
            video.options = X264_OPTIONS
        if audio is not None:
            layout = "stereo" if audio.shape[0] == 2 else "mono"
            audio_stream = container.add_stream("aac", rate=sample_rate, layout=layout)
            audio_stream.bit_rate = AAC_BITRATE
        if video is not None:
            video.time_base = Fraction(1, fps)
            for index, frame_rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(frame_rgb, format="rgb24")
                frame.pts = index        # explicit timestamps: x264's rate control reads them
                container.mux(video.encode(frame))
            container.mux(video.encode())
        if audio_stream is not None:
            for start in range(0, audio.shape[1], AAC_FRAME_SAMPLES):
                chunk = np.ascontiguousarray(audio[:, start:start + AAC_FRAME_SAMPLES])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=audio_stream.layout.name)
                frame.sample_rate = sample_rate
                frame.pts = start
                container.mux(audio_stream.encode(frame))
            container.mux(audio_stream.encode())


def _make_clip(spec: ClipSpec) -> dict:
    frames, audio, truth = render_clip(spec)
    write_mp4(Path(spec.out_dir) / truth["file"], frames, audio, spec.fps, spec.sample_rate)
    return truth


def parse_size(text: str) -> tuple[int, int]:
    """'160x120' -> (160, 120); both even (yuv420p needs even dimensions)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r}: expected WIDTHxHEIGHT, e.g. 160x120") from None
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"size {text!r}: width and height must be even and at least 16")
    return width, height


def generate(out_dir: str | Path, clips: int, seconds: float = DEFAULT_SECONDS, seed: int = 0,
             size: tuple[int, int] = DEFAULT_SIZE, fps: int = DEFAULT_FPS,
             sample_rate: int = SAMPLE_RATE, workers: int = 1, progress: bool = False,
             difficulty: float = DEFAULT_DIFFICULTY) -> list[dict]:
    """Write `clips` synthetic mp4 files and `truth.jsonl` into out_dir; return the truth rows.

    Classes are balanced (clip i has class i mod 15 of a seed-dependent order). `difficulty` in
    [0, 1] scales the class-independent nuisances (module doc). Deterministic: the same arguments
    give byte-identical files, whatever `workers`.
    """
    if clips < 1 or seconds <= 0 or fps < 1:
        raise ValueError(f"need clips >= 1, seconds > 0, fps >= 1 (got {clips}, {seconds}, {fps})")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must lie in [0, 1] (got {difficulty})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = class_names()
    order = np.random.default_rng(seed).permutation(len(names))
    specs = [ClipSpec(i, names[order[i % len(names)]], str(out), seconds, seed, size[0], size[1], fps,
                      sample_rate, difficulty) for i in range(clips)]
    run: Callable = _make_clip
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            rows = list(_progress(pool.map(run, specs, chunksize=1), clips, progress))
    else:
        rows = list(_progress(map(run, specs), clips, progress))
    with open(out / TRUTH_FILE, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return rows


def _progress(iterable, total: int, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc="synth", unit="clip")


def make_broken_files(out_dir: str | Path, good_clip: str | Path, seconds: float = 2.0,
                      fps: int = DEFAULT_FPS, size: tuple[int, int] = DEFAULT_SIZE) -> dict[str, str]:
    """Write deliberately broken inputs for tests of the shard writer; return {file name: kind}.

    Kinds: `truncated` (the first 40 % of a good clip's bytes), `audio_only`, `video_only`,
    `empty` (0 bytes), `text` (a text file named .mp4).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(good_clip).read_bytes()
    (out / "broken_truncated.mp4").write_bytes(data[: int(len(data) * 0.4)])
    spec = ClipSpec(0, class_names()[0], str(out), seconds, 12345, size[0], size[1], fps, SAMPLE_RATE)
    frames, audio, _ = render_clip(spec)
    write_mp4(out / "broken_audio_only.mp4", None, audio, fps, SAMPLE_RATE)
    write_mp4(out / "broken_video_only.mp4", frames, None, fps, SAMPLE_RATE)
    (out / "broken_empty.mp4").write_bytes(b"")
    (out / "broken_text.mp4").write_text("this is not a video, just text named .mp4\n" * 20)
    return {"broken_truncated.mp4": "truncated", "broken_audio_only.mp4": "audio_only",
            "broken_video_only.mp4": "video_only", "broken_empty.mp4": "empty", "broken_text.mp4": "text"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deteclap.synth",
        description="Write synthetic fine-grained audio-visual mp4 clips (H.264 + AAC stereo) and "
                    "OUT/truth.jsonl (file, id, class, super_class, seen, heard). Deterministic from --seed.")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--clips", type=int, required=True, help="number of clips")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="clip length in seconds")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--size", default="x".join(map(str, DEFAULT_SIZE)), help="frame size WxH (even)")
    parser.add_argument("--fps", type=int, default=DEFAULT_FPS, help="video frame rate")
    parser.add_argument("--workers", type=int, default=1, help="processes to render with")
    parser.add_argument("--difficulty", type=float, default=DEFAULT_DIFFICULTY,
                        help="0..1: scales only-heard / only-seen objects, distractors and frame noise "
                             "(1: the full set; 0: each clip's object alone)")
    args = parser.parse_args(argv)
    try:
        size = parse_size(args.size)
        rows = generate(args.out, args.clips, args.seconds, args.seed, size, args.fps,
                        workers=args.workers, progress=True, difficulty=args.difficulty)
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {len(rows)} clips and {TRUTH_FILE} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
