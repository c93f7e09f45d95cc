"""The analytic evaluator: real clips match their prompts (>= 95 %), clips do not match prompts that change one
attribute, silence matches nothing, and the Fréchet and content distances behave as distances should."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recipes.procedural.evaluate import (  # noqa: E402
    accuracy,
    attribute_accuracy,
    content_distance,
    features,
    frechet_distance,
    score,
)
from recipes.procedural.sounds import SOURCES, VALUES, all_classes, caption, synthesize  # noqa: E402

SEED = 12345  # not a seed the thresholds were looked at with


def clips_of(attributes, count, seed=SEED):
    return [synthesize(attributes, np.random.default_rng([seed, i])) for i in range(count)]


@pytest.fixture(scope="module")
def real():
    """(clips, held-out captions, attribute dicts): 3 fresh clips of every class."""
    clips, prompts, classes = [], [], []
    for k, attributes in enumerate(all_classes()):
        rng = np.random.default_rng([SEED, k])
        for clip in clips_of(attributes, 3, seed=SEED + k):
            clips.append(clip)
            prompts.append(caption(attributes, rng, held_out=True))
            classes.append(attributes)
    return clips, prompts, classes


def test_real_clips_match_their_prompts(real):
    clips, prompts, _ = real
    assert accuracy(clips, prompts) >= 0.95


def test_attribute_accuracy_counts_the_share_of_named_attributes_that_match(real):
    clips, prompts, _ = real
    assert attribute_accuracy(clips, prompts) >= 0.95
    tone = clips_of({"source": "tone", "pitch": "low", "envelope": "steady"}, 2)
    # source and pitch right, envelope wrong: no match, 2 of 3 attributes
    assert accuracy(tone, ["a low tone fading in"] * 2) == 0.0
    assert attribute_accuracy(tone, ["a low tone fading in"] * 2) == pytest.approx(2 / 3)
    # a noise prompt answered by a tone: the source is wrong, its envelope (read as for any source) is right
    assert attribute_accuracy(tone, ["hiss at a constant volume"] * 2) == pytest.approx(1 / 3)
    assert attribute_accuracy([np.zeros(44100)], ["a low tone"]) == 0.0


def test_a_prompt_that_changes_one_attribute_is_not_matched(real):
    clips, _, classes = real
    trials = misses = 0
    for clip, attributes in zip(clips, classes):
        for attribute in SOURCES[attributes["source"]]:
            for value in VALUES[attribute]:
                if value != attributes[attribute]:
                    trials += 1
                    misses += not score(clip, {**attributes, attribute: value})[0]
    assert misses / trials >= 0.95


@pytest.mark.parametrize(
    "attributes, wrong_prompt",
    [
        ({"source": "sweep", "direction": "up"}, "a falling sweep"),
        ({"source": "sweep", "direction": "down"}, "a rising sweep"),
        ({"source": "tone", "pitch": "high", "envelope": "steady"}, "a low tone"),
        ({"source": "tone", "pitch": "mid", "envelope": "fade_in"}, "a medium-pitched tone fading out"),
        ({"source": "beeps", "pitch": "mid", "rate": "fast"}, "slow medium-pitched beeps"),
        ({"source": "noise", "colour": "hiss", "envelope": "steady"}, "a deep rumble held steady"),
        ({"source": "clicks", "rate": "slow"}, "slow knocks"),
        ({"source": "siren", "rate": "slow"}, "a fast siren"),
        ({"source": "chirps", "rate": "fast"}, "fast beeps"),
    ],
)
def test_named_mismatches_fail_and_the_right_prompt_passes(attributes, wrong_prompt):
    clip = clips_of(attributes, 1)[0]
    assert not score(clip, wrong_prompt)[0]
    assert score(clip, attributes)[0]


def test_silence_and_a_bad_clip_shape():
    assert score(np.zeros(180224, dtype=np.float32), "a low tone")[1] == {"source": "silence"}
    assert not score(1e-5 * np.random.default_rng(0).standard_normal(180224), "hiss")[0]
    with pytest.raises(ValueError, match="mono clip"):
        score(np.zeros((2, 3, 4)), "a low tone")
    with pytest.raises(ValueError, match="as many prompts"):
        accuracy([np.zeros(4096)], [])


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_a_shift(real):
    feats = np.stack([features(c) for c in real[0]])
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
    shifts = [frechet_distance(feats, feats + delta) for delta in (0.1, 0.5, 1.0)]
    assert shifts[0] < shifts[1] < shifts[2]
    assert shifts[2] == pytest.approx(feats.shape[1] * 1.0, rel=1e-6)  # ‖Δμ‖² when the covariances agree
    with pytest.raises(ValueError, match="same dim"):
        frechet_distance(feats, feats[:, :3])


def test_frechet_distance_separates_other_sounds_from_another_draw_of_the_same_ones(real):
    clips, _, classes = real
    feats = np.stack([features(c) for c in clips])
    again = np.stack([features(c) for a in all_classes() for c in clips_of(a, 3, seed=SEED + 1000)])
    tonal_only = np.stack([features(c) for c, a in zip(clips, classes) if a["source"] in ("tone", "beeps")])
    same = frechet_distance(feats, again)
    assert 3 * same < frechet_distance(feats, tonal_only)


def test_content_distance_small_for_the_same_take_large_for_another_take():
    first, other = clips_of({"source": "beeps", "pitch": "mid", "rate": "slow"}, 2)
    assert content_distance(first, first) == 0.0
    slightly_off = first + 0.003 * np.random.default_rng(1).standard_normal(first.shape).astype(np.float32)
    assert 3 * content_distance(first, slightly_off) < content_distance(first, other)
