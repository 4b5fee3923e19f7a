import numpy as np
import pytest
import torch

from grpo.core.errors import UserError
from grpo.plugins.shapes.faithfulness import analyse
from grpo.plugins.shapes.rewards import JpegCompressibility, ShapesFaithfulness
from grpo.plugins.shapes.world import Scene, all_scenes, parse_caption, render, render_batch, split_scenes


def test_split_holds_out_16_and_keeps_every_word_in_training():
    train, held = split_scenes()
    assert len(train) == 146 and len(held) == 16 and not set(train) & set(held)
    words = {w for s in train for w in s.caption.split()}
    assert {w for s in held for w in s.caption.split()} <= words


def test_caption_round_trip_and_errors():
    for scene in all_scenes():
        assert parse_caption(scene.caption) == scene
    for bad in ["two red circle on a gray background", "four red circles on a gray background",
                "two purple circles on a gray background", "hello"]:
        with pytest.raises(ValueError):
            parse_caption(bad)


def test_faithfulness_on_real_renders_is_near_perfect():
    rng = np.random.default_rng(0)
    scenes = all_scenes()
    results = [analyse(render(s, rng), s) for s in scenes * 3]
    assert np.mean([r.exact for r in results]) > 0.97
    assert np.mean([r.score for r in results]) > 0.99


def test_faithfulness_penalises_wrong_captions_and_noise():
    rng = np.random.default_rng(1)
    scenes = all_scenes()
    wrong = [analyse(render(s, rng), scenes[(i * 37 + 5) % len(scenes)]).score for i, s in enumerate(scenes)]
    noise = [analyse(rng.random((32, 32, 3)).astype(np.float32), s).score for s in scenes]
    assert np.mean(wrong) < 0.4 and np.mean(noise) < 0.45


def test_faithfulness_components_on_a_hand_made_image():
    # one red square drawn by hand on a black background, judged against several captions
    img = np.zeros((32, 32, 3), dtype=np.float32)
    img[8:20, 10:22] = np.array([225, 35, 35]) / 255.0
    right = analyse(img, Scene(1, "red", "square", "black"))
    assert (right.background, right.colour, right.count, right.shape, right.exact) == (1, 1, 1, 1, 1)
    wrong = analyse(img, Scene(3, "blue", "circle", "white"))
    assert (wrong.background, wrong.colour, wrong.shape, wrong.exact) == (0, 0, 0, 0)
    assert wrong.count == pytest.approx(1 / 3)
    assert wrong.score == pytest.approx(0.30 / 3)


def test_reward_is_batch_invariant_and_reports_components():
    rng = np.random.default_rng(2)
    scenes = all_scenes()[:6]
    images = torch.from_numpy(render_batch(scenes, rng))
    prompts = [s.caption for s in scenes]
    reward = ShapesFaithfulness()
    whole = reward.score(images, prompts)
    alone = torch.cat([reward.score(images[i : i + 1], prompts[i : i + 1]).scores for i in range(6)])
    torch.testing.assert_close(whole.scores, alone)
    assert set(whole.components) == {"background", "colour", "count", "shape", "exact", "score"}
    exact = ShapesFaithfulness(target="exact").score(images, prompts)
    torch.testing.assert_close(exact.scores, whole.components["exact"])
    with pytest.raises(UserError):
        reward.score(images[:1], ["a photo of a cat"])


def test_jpeg_compressibility_prefers_flat_images():
    flat = torch.full((1, 3, 32, 32), 0.5)
    noisy = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    r = JpegCompressibility()
    assert float(r.score(flat, [""]).scores) > float(r.score(noisy, [""]).scores)


def test_graded_shape_likeness_by_hand():
    """A hand-drawn 12×12 square has fill 1 and top share ½: its likeness to the square prototype
    (0.996, 0.501) is exp(−½((0.004/0.08)² + (0.001/0.05)²)) and to the circle's (0.787, 0.499)
    exp(−½((0.213/0.08)² + (0.001/0.05)²)); the soft score swaps it in for the 0/1 shape."""
    img = np.zeros((32, 32, 3), dtype=np.float32)
    img[8:20, 10:22] = np.array([225, 35, 35]) / 255.0
    square = analyse(img, Scene(1, "red", "square", "black"))
    assert square.shape_soft == pytest.approx(np.exp(-0.5 * ((0.004 / 0.08) ** 2 + (0.001 / 0.05) ** 2)), rel=1e-4)
    circle = analyse(img, Scene(1, "red", "circle", "black"))
    assert circle.shape == 0.0
    assert circle.shape_soft == pytest.approx(np.exp(-0.5 * ((0.213 / 0.08) ** 2 + (0.001 / 0.05) ** 2)), rel=1e-4)
    assert circle.soft == pytest.approx(circle.score + 0.30 * circle.shape_soft)
    # cutting the square's corners moves it towards the circle: graded, where the class is not
    img[8, 10] = img[8, 21] = img[19, 10] = img[19, 21] = 0.0
    cut = analyse(img, Scene(1, "red", "circle", "black"))
    assert cut.shape == 0.0 and cut.shape_soft > circle.shape_soft
    # rendered scenes score near their prototypes; the reward reports the graded parts when asked
    rng = np.random.default_rng(3)
    scenes = all_scenes()
    images = torch.from_numpy(render_batch(scenes, rng))
    soft = ShapesFaithfulness(target="soft").score(images, [s.caption for s in scenes])
    assert {"shape_soft", "soft"} <= set(soft.components)
    torch.testing.assert_close(soft.scores, soft.components["soft"])
    assert float(soft.components["shape_soft"].mean()) > 0.8
