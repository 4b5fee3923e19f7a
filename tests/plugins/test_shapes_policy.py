"""The shapes policy: loading by path, LoRA, the KL reference, classifier-free guidance."""

import torch

from grpo.plugins.shapes.policy import ShapesPolicy

PROMPTS = ["two red circles on a gray background", "one blue square on a white background"]


def _velocity(policy, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    sigma = torch.tensor([0.9, 0.4])
    return policy.velocity(x, sigma, policy.encode_prompts(PROMPTS))


def test_lora_trains_only_adapters_and_reference_is_the_base(tiny_model_dir):
    base = ShapesPolicy(path=str(tiny_model_dir), device="cpu")
    lora = ShapesPolicy(path=str(tiny_model_dir), device="cpu", lora_rank=2, lora_alpha=2.0)
    names = [n for n, p in lora.denoiser.named_parameters() if p.requires_grad]
    assert names and all("lora" in n for n in names)
    v0 = _velocity(base)
    torch.testing.assert_close(_velocity(lora), v0)  # adapters start at zero
    with torch.no_grad():
        for p in lora.trainable_parameters():
            p.add_(0.05)
    assert not torch.allclose(_velocity(lora), v0)
    with lora.reference():
        torch.testing.assert_close(_velocity(lora), v0)
    assert not torch.allclose(_velocity(lora), v0)  # adapters are back on


def test_full_fine_tune_reference_is_a_frozen_snapshot(tiny_model_dir):
    policy = ShapesPolicy(path=str(tiny_model_dir), device="cpu", freeze=["conv_in.*"])
    assert not policy.denoiser.conv_in.weight.requires_grad
    assert policy.denoiser.conv_out.weight.requires_grad
    policy.snapshot_reference()
    v0 = _velocity(policy)
    with torch.no_grad():
        policy.denoiser.conv_out.bias.add_(1.0)
    assert not torch.allclose(_velocity(policy), v0)
    with policy.reference():
        torch.testing.assert_close(_velocity(policy), v0)


def test_guidance_combines_conditional_and_null_predictions(tiny_model_dir):
    plain = ShapesPolicy(path=str(tiny_model_dir), device="cpu")
    guided = ShapesPolicy(path=str(tiny_model_dir), device="cpu", guidance_scale=3.0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    sigma = torch.tensor([0.7, 0.7])
    cond = plain.encode_prompts(PROMPTS)
    null = plain.encode_prompts(["", ""])
    v_c = plain.velocity(x, sigma, cond)
    v_u = plain.velocity(x, sigma, null)
    torch.testing.assert_close(guided.velocity(x, sigma, cond), v_u + 3.0 * (v_c - v_u), atol=1e-5, rtol=1e-5)
