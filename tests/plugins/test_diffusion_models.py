"""FLUX, SD3 and Wan policies on tiny random-weight pipelines saved to disk and loaded by path:
they sample what diffusers' own pipelines sample, keep the Policy contract, run a BranchGRPO
iteration end to end, and export a folder the pipeline class loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support import clipped_update, log_probs, sample

from grpo.core.edges import EdgeUnits
from grpo.core.errors import UserError
from grpo.core.sampler import follow_model_grid, sigma_grid
from grpo.core.tree import Advantages, EdgeSet, TreePlan
from grpo.plugins.diffusion.models import FluxPolicy, SD3Policy, WanPolicy
from grpo.plugins.samplers.flow import ODE
from grpo.testing.tiny_diffusers import tiny_flux, tiny_sd3, tiny_wan

SIZE = dict(height=32, width=32)
CASES = {
    "flux": (tiny_flux, FluxPolicy, SIZE),
    "sd3": (tiny_sd3, SD3Policy, {**SIZE, "guidance_scale": 3.0, "negative_prompt": "blurry"}),
    "wan-t2v": (tiny_wan, WanPolicy, {**SIZE, "frames": 5, "guidance_scale": 3.0, "negative_prompt": "static"}),
}
PROMPTS = ["a red circle", "two blue squares on a green field"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-diffusers")
    return {name: build(root / name) for name, (build, _, _) in CASES.items()}


def make(name, folders, **extra):
    _, cls, kwargs = CASES[name]
    return cls(path=str(folders[name]), precision="fp32", device="cpu", max_sequence_length=16, **{**kwargs, **extra})


def pipeline_latents(name, policy, noise, steps, size=32):
    """The diffusers pipeline's own sampling from the same noise, as latents."""
    pipe = policy.pipe
    common = dict(prompt=PROMPTS, num_inference_steps=steps, latents=noise.clone(), output_type="latent",
                  max_sequence_length=16, height=size, width=size)
    if name == "flux":
        return pipe(**common, guidance_scale=policy.guidance).images
    if name == "sd3":
        return pipe(**common, guidance_scale=policy.guidance_scale, negative_prompt=[policy.negative_prompt] * 2).images
    return pipe(**common, num_frames=5, guidance_scale=policy.guidance_scale,
                negative_prompt=[policy.negative_prompt] * 2).frames


class PipelineGridODE(ODE):
    """Euler on the σ grid the policy says its pipeline samples on (``model.sigma_grid = "pipeline"``)."""

    def __init__(self, policy, steps):
        super().__init__(steps=steps)
        follow_model_grid(self, policy.sigma_schedule(), "ode")


def euler_scheduler(policy):
    """Wan's pipeline samples with UniPC, a multistep solver: its model calls are compared under the
    Euler scheduler (at Wan's shift), with which the pipeline takes plain Euler steps."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if type(policy.pipe.scheduler).__name__ != "FlowMatchEulerDiscreteScheduler":
        policy.pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=policy.pipe.scheduler.config.flow_shift)
    return policy


@pytest.mark.parametrize("name", list(CASES))
def test_sampling_matches_the_diffusers_pipeline(name, folders):
    policy = euler_scheduler(make(name, folders))
    steps = 4
    noise = torch.randn((2, *policy.latent_shape), generator=torch.Generator().manual_seed(3))
    ours = sample(policy, PipelineGridODE(policy, steps), TreePlan((1,) * steps, (1.0,) * steps, (False,) * steps),
                  policy.encode_prompts(PROMPTS), generator=torch.Generator(), max_batch=8, init_noise=noise).final
    theirs = pipeline_latents(name, policy, noise, steps)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-4, atol=1e-5)
    media = policy.decode(ours)
    want = (2, 5, 3, 32, 32) if name == "wan-t2v" else (2, 3, 32, 32)
    assert media.shape == want and media.dtype == torch.float32 and 0 <= float(media.min()) <= float(media.max()) <= 1


@pytest.mark.parametrize("steps", [4, 10])
@pytest.mark.parametrize("name", list(CASES))
def test_the_default_grid_is_the_one_the_pipeline_samples_on(name, folders, steps):
    """The tiny folders carry the real models' scheduler configs (FLUX.1-dev's dynamic shift, SD3.5's
    shift 3, Wan's UniPC with flow sigmas); the grid is read back from the pipeline's scheduler after
    a call of the pipeline itself, at two image sizes (FLUX's shift depends on the token count)."""
    for size in (32, 64):
        policy = make(name, folders, height=size, width=size)
        times, shift = policy.sigma_schedule()
        noise = torch.randn((2, *policy.latent_shape), generator=torch.Generator().manual_seed(3))
        pipeline_latents(name, policy, noise, steps, size)
        torch.testing.assert_close(sigma_grid(steps, shift, times), policy.pipe.scheduler.sigmas.float(),
                                   rtol=0, atol=3e-7)
    assert len(sigma_grid(steps, shift, times)) == steps + 1


@pytest.mark.parametrize("name", list(CASES))
def test_the_grid_is_known_from_the_configs_before_weights_load(name, folders):
    """What `grpo validate` and `grpo plan` put on the sampler equals the loaded model's grid."""
    _, cls, kwargs = CASES[name]
    options = {"path": str(folders[name]), "height": 64, "width": 64, **({"frames": 5} if name == "wan-t2v" else {})}
    planned_times, planned_shift = cls.sigma_schedule_for(options)
    times, shift = make(name, folders, height=64, width=64).sigma_schedule()
    assert planned_shift == shift
    torch.testing.assert_close(sigma_grid(10, planned_shift, planned_times), sigma_grid(10, shift, times), rtol=0, atol=0)


def test_the_sd35_grid_at_ten_steps(folders):
    """SD3.5's scheduler at shift 3 over 10 steps: 1.0, 0.9601, …, 0.278, 0.0089, 0 (where the plain
    shifted grid has 0.9643, …, 0.4286, 0.25, 0)."""
    times, shift = make("sd3", folders).sigma_schedule()
    grid = sigma_grid(10, shift, times)
    assert shift == 3.0
    torch.testing.assert_close(grid[[0, 1, 8, 9, 10]], torch.tensor([1.0, 0.9601, 0.2780, 0.0089, 0.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(sigma_grid(10, 3.0)[[1, 8, 9]], torch.tensor([0.9643, 0.4286, 0.25]), atol=1e-4, rtol=0)


def test_the_other_grids_are_options(folders):
    from diffusers import DPMSolverMultistepScheduler

    assert make("sd3", folders, sigma_grid="shifted").sigma_schedule() is None
    times, shift = make("sd3", folders, sigma_grid="flow-sigmas").sigma_schedule()
    assert shift is None  # the sampler's shift
    dpm = DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction")
    for steps in (7, 10):
        dpm.set_timesteps(steps)
        torch.testing.assert_close(sigma_grid(steps, 3.0, times), dpm.sigmas.float(), rtol=0, atol=3e-7)


def test_a_scheduler_grid_this_project_cannot_follow_is_refused(folders):
    from diffusers import FlowMatchEulerDiscreteScheduler

    policy = make("sd3", folders)
    policy.pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_karras_sigmas=True)
    with pytest.raises(UserError, match="use_karras_sigmas") as e:
        policy.sigma_schedule()
    assert e.value.where == "model.sigma_grid" and "shifted" in e.value.hint


def test_the_run_samples_on_the_model_grid_and_a_contradicting_shift_is_refused(folders, tmp_path):
    from grpo.core.components import build
    from grpo.core.recipe import parse
    from grpo.core.registry import load_registry

    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    model = {"use": "sd3", "path": str(folders["sd3"]), "precision": "fp32", "device": "cpu",
             "max_sequence_length": 16, **CASES["sd3"][2]}
    data = lambda **sampler: {  # noqa: E731
        "model": model, "strategy": {"use": "flow-grpo", "group_size": 2}, "sampler": {"use": "flow-sde", **sampler},
        "reward": [{"use": "jpeg-compressibility"}],
        "prompts": {"use": "file", "path": str(tmp_path / "prompts.txt"), "eval_count": 1},
        "train": {"iterations": 1, "prompts_per_iteration": 2}, "backend": {"use": "torch", "device": "cpu"}}
    registry = load_registry([])
    c = build(parse(data(steps=10, shift=3.0), registry))
    torch.testing.assert_close(c.sampler.sigmas()[[1, 8, 9]], torch.tensor([0.9601, 0.2780, 0.0089]), atol=1e-4, rtol=0)
    with pytest.raises(UserError, match="shift 3") as e:  # said before any weight is read
        build(parse(data(steps=10, shift=2.0), registry))
    assert [x.where for x in e.value.errors] == ["sampler.shift"]
    model["sigma_grid"] = "shifted"
    torch.testing.assert_close(build(parse(data(steps=10, shift=2.0), registry)).sampler.sigmas(), sigma_grid(10, 2.0))


@pytest.mark.parametrize("name", list(CASES))
def test_policies_with_lora_keep_the_contract(name, folders):
    """(Each full fine-tune keeps it too: the registry walk checks every built-in.)"""
    from grpo.testing import check_policy

    lora = make(name, folders, lora_rank=2)
    assert all("lora_" in n for n, p in lora.denoiser.named_parameters() if p.requires_grad)
    check_policy(lora)


VIDEO_REWARD = '''
import torch
from grpo.core.reward import RewardOutput
from grpo.core.hookspecs import hookimpl


class MeanRed:
    """Mean of the red channel over every frame (a stand-in video reward for the test)."""
    media = "video"

    def score(self, videos, prompts):
        assert videos.dim() == 5
        return RewardOutput(videos[:, :, 0].mean(dim=(1, 2, 3)).float())


@hookimpl
def grpo_register_reward(registry):
    registry.add("test-mean-red", MeanRed)
'''


@pytest.mark.parametrize("name", list(CASES))
def test_one_branchgrpo_iteration_end_to_end(name, folders, tmp_path, monkeypatch):
    from grpo.core.engine import Trainer
    from grpo.core.recipe import parse
    from grpo.core.registry import load_registry
    from grpo.core.runlog import read_metrics

    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (tmp_path / "video_reward.py").write_text(VIDEO_REWARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    _, _, kwargs = CASES[name]
    model = {"use": name, "path": str(folders[name]), "precision": "fp32", "device": "cpu",
             "max_sequence_length": 16, **kwargs}
    if name == "flux":  # BranchGRPO's preset samples at shift 3 on its release's grid, not FLUX's dynamic shift
        model["sigma_grid"] = "shifted"
    data = {
        "model": model,
        "strategy": {"use": "branchgrpo", "split_points": [0, 2], "branch_factor": 2, "clip_range": 1e-3,
                     "kl_beta": 0.1},
        "sampler": {"use": "dance-sde", "steps": 4, "eta": 0.5},
        "reward": [{"use": "test-mean-red" if name == "wan-t2v" else "jpeg-compressibility"}],
        "prompts": {"use": "file", "path": str(tmp_path / "prompts.txt"), "eval_count": 1},
        "train": {"iterations": 1, "prompts_per_iteration": 2, "micro_batch": 4, "rollout_batch": 8,
                  "checkpoint_every": 1},
        "eval": {"every": 1, "grid_images": 2},
        "backend": {"use": "torch", "device": "cpu"},
        "plugins": {"modules": ["video_reward"]},
    }
    registry = load_registry(["video_reward"])
    Trainer(parse(data, registry), tmp_path / "run").run()
    train = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert len(train) == 1 and train[0]["cost/leaves"] == 8 and train[0]["update/grad_norm"] > 0
    assert train[0]["update/kl"] >= 0 and (tmp_path / "run" / "checkpoints" / "iter_000001").is_dir()
    if name == "wan-t2v":  # videos are logged as animations: 5 frames at the model's fps
        from PIL import Image

        gif = Image.open(tmp_path / "run" / "samples" / "eval_000001.gif")
        assert gif.n_frames == 5 and abs(gif.info["duration"] - 1000 / 16) <= 10  # GIF keeps 10 ms units
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
        events.Reload()
        assert "eval/videos" in events.Tags()["images"]


@pytest.mark.parametrize("name", ["flux", "wan-t2v"])
def test_export_loads_in_the_pipeline_class(name, folders, tmp_path):
    import diffusers

    policy = make(name, folders, lora_rank=2)
    with torch.no_grad():  # move the adapters off their start so that merging matters
        for n, p in policy.denoiser.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    x = torch.randn((2, *policy.latent_shape), generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.7, 0.3])
    cond = policy.encode_prompts(PROMPTS)
    want = policy.velocity(x, sigma, cond)
    policy.export(tmp_path / "out")
    assert (tmp_path / "out" / "lora" / "adapter.safetensors").is_file()
    pipe = getattr(diffusers, policy.pipeline_name).from_pretrained(str(tmp_path / "out"))
    assert not any("lora" in k for k in pipe.transformer.state_dict())
    again = make(name, {name: Path(tmp_path / "out")})
    torch.testing.assert_close(again.velocity(x, sigma, again.encode_prompts(PROMPTS)), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["flux", "wan-t2v"])
def test_gradient_checkpointing_gives_the_same_gradients(name, folders):
    grads = []
    for checkpointing in (False, True):
        policy = make(name, folders, gradient_checkpointing=checkpointing)
        policy.denoiser.train()  # some blocks checkpoint only in training mode
        x = torch.randn((2, *policy.latent_shape), generator=torch.Generator().manual_seed(1))
        policy.velocity(x, torch.tensor([0.8, 0.4]), policy.encode_prompts(PROMPTS)).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.trainable_parameters() if p.grad is not None]))
        assert policy.denoiser.is_gradient_checkpointing == checkpointing
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_the_latent_shape_is_known_from_the_configs_before_weights_load(name, folders):
    """What `grpo validate` checks a noise block against equals the loaded policy's noise grid."""
    _, cls, kwargs = CASES[name]
    options = {"path": str(folders[name]), "height": 32, "width": 32, **({"frames": 5} if name == "wan-t2v" else {})}
    from grpo.core.registry import complete

    policy = complete(make(name, folders), "model")  # the built-in default for models that tile their latent
    assert cls.noise_grid_for(options) == policy.noise_grid()
    if name != "flux":
        assert policy.noise_grid() == tuple(policy.latent_shape)
    assert cls.noise_grid_for({**options, "path": "${MODEL_PATH}"}) is None  # not known until the run starts


@pytest.mark.parametrize("name", list(CASES))
def test_bf16_models_get_the_timesteps_the_pipelines_pass(name, folders):
    """In bf16, SD3 and Wan pass σ·1000 to the transformer in fp32 as diffusers' pipelines do with the
    Euler scheduler (a bf16 cast moved 982.8 to 984); FLUX's pipeline itself casts σ to the latents'
    dtype. (Wan's own UniPC scheduler hands the pipeline ⌊1000σ⌋ as integers; docs/fidelity.md.)"""
    _, cls, kwargs = CASES[name]
    policy = euler_scheduler(cls(path=str(folders[name]), precision="bf16", device="cpu", max_sequence_length=16,
                                 **kwargs))
    seen = []
    hook = policy.denoiser.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["timestep"].clone()),
                                                     with_kwargs=True)
    try:
        noise = torch.randn((2, *policy.latent_shape), generator=torch.Generator().manual_seed(0))
        pipeline_latents(name, policy, noise.to(torch.bfloat16), 3)
        theirs = next(t for t in seen if not torch.equal(t[:1], seen[0][:1]))  # the second step's
        seen.clear()
        sigma = PipelineGridODE(policy, 3).sigmas()[1].expand(2)
        policy.velocity(noise, sigma, policy.encode_prompts(PROMPTS))
        ours = seen[0]
    finally:
        hook.remove()
    assert ours.dtype == theirs.dtype, (ours.dtype, theirs.dtype)
    torch.testing.assert_close(ours[:2].float(), theirs[:2].float(), rtol=0, atol=1e-3)


def test_flux_noise_tiles_are_squares_of_the_unpacked_latent(folders):
    """With noise_block b, one draw covers exactly one b×b square of FLUX's unpacked latent (before,
    the tiles were taken over the packed (tokens, 64) axes: a 2×16 strip shared by two channels), and
    the stored log-probabilities are the density the update re-evaluates (ratio 1)."""
    from grpo.plugins.samplers.flow import DanceSDE

    policy = make("flux", folders)
    c, h, w = policy.noise_grid()
    b = 4
    sampler = DanceSDE(steps=2, eta=0.7, noise_block=b)
    cond = policy.encode_prompts(PROMPTS[:1])
    ro = sample(policy, sampler, TreePlan((2, 1), (1.0, 1.0), (True, True)), cond,
                generator=torch.Generator().manual_seed(0), max_batch=4)
    x, sigma, sigma_next = ro.states[0], ro.sigmas[0].expand(1), ro.sigmas[1].expand(1)
    mean, std = sampler.step(x, policy.velocity(x, sigma, cond), sigma, sigma_next)
    eps = (ro.states[1] - mean) / std.view(-1, 1, 1)  # both children's standard normal draws, packed
    grid = policy.to_noise_grid(eps)
    # the packing is diffusers' own
    torch.testing.assert_close(policy.pipe._pack_latents(grid, 2, c, h, w), eps)
    tiles = grid.reshape(2, c, h // b, b, w // b, b)
    assert float((tiles - tiles[:, :, :, :1, :, :1]).abs().max()) < 1e-4  # constant over each b×b square
    means = tiles[:, :, :, 0, :, 0]
    assert means.unique().numel() > 0.9 * means.numel()  # and one draw per square, channel and child
    assert abs(float(means.std()) - 1.0) < 0.25
    batch = EdgeUnits.gather(ro, Advantages([torch.zeros(2), torch.zeros(2)]), EdgeSet.all_stochastic(ro))
    log_prob = log_probs(policy, sampler, ro, cond, batch)
    torch.testing.assert_close(log_prob, batch.old_log_prob, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(CASES))
def test_bf16_rollout_and_update_stay_on_policy(name, folders):
    """One rollout and the update's re-evaluation of every edge, each model in bf16 on the CPU: the
    on-policy ratios stay within 2e-3 of 1 (rollout and update batch the model differently, which bf16
    rounds differently; measured: FLUX and Wan 0, SD3 ≤ 5e-4), the weights train, and nothing is
    skipped."""
    from grpo.core.backend import OptimizerConfig
    from grpo.plugins.backends.plain import TorchBackend
    from grpo.plugins.samplers.flow import DanceSDE

    _, cls, kwargs = CASES[name]
    policy = cls(path=str(folders[name]), precision="bf16", device="cpu", max_sequence_length=16, **kwargs)
    sampler = DanceSDE(steps=3, eta=0.7)
    cond = policy.encode_prompts(PROMPTS)
    plan = TreePlan((2, 1, 1), (1.0, 1.0, 1.0), (True, True, True))
    ro = sample(policy, sampler, plan, cond, generator=torch.Generator().manual_seed(0), max_batch=3)
    adv = Advantages([torch.randn(ro.states[k + 1].shape[0], generator=torch.Generator().manual_seed(k))
                      for k in range(3)])
    batch = EdgeUnits.gather(ro, adv, EdgeSet.all_stochastic(ro))
    params = policy.trainable_parameters()
    before = [p.detach().float().clone() for p in params]
    backend = TorchBackend(device="cpu")
    backend.setup(policy.denoiser, params, OptimizerConfig(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8,
                                                           grad_clip=1.0))
    stats = clipped_update(policy, sampler, backend, ro, cond, batch, clip_range=1e-3)
    assert stats.trained == 2 * 6 and stats.skipped == 0 and stats.optimizer_steps == 1
    low, high = stats.metrics["ratio_min"], stats.metrics["ratio_max"]
    assert abs(low - 1) < 2e-3 and abs(high - 1) < 2e-3, (low, high)
    assert any(not torch.equal(p.detach().float(), b) for p, b in zip(params, before, strict=True))


PEER_RECIPES = {"sd35_flowgrpo.toml": "sd3", "flux_mixgrpo.toml": "flux", "wanx_flowgrpo.toml": "wan-t2v",
                "sd35_nft.toml": "sd3", "sd35_awm.toml": "sd3", "sd35_dgpo.toml": "sd3", "sd35_grpo_guard.toml": "sd3"}


@pytest.mark.parametrize("recipe,name", list(PEER_RECIPES.items()))
def test_peer_recipes_run_an_iteration_on_their_tiny_model(recipe, name, folders, tmp_path, monkeypatch):
    """The recipe's strategy, sampler and training settings as shipped, and its model by the recipe's
    Hub id with no variable set, from a Hub cache holding the tiny model under that id (offline);
    what a tiny CPU model needs changes (32² images, 5 frames, fp32, the torch backend, a reward
    that costs nothing, one prompt)."""
    from grpo.core.engine import Trainer
    from grpo.core.recipe import ENV_PATTERN, expand_env, parse
    from grpo.core.registry import load_registry
    from grpo.core.runlog import read_metrics
    from grpo.core.tomlfile import tomllib
    from grpo.testing.hub_cache import add_to_hub_cache

    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (tmp_path / "video_reward.py").write_text(VIDEO_REWARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = tomllib.loads((Path(__file__).resolve().parents[2] / "recipes" / recipe).read_text())
    variable, hub_id = ENV_PATTERN.fullmatch(data["model"]["path"]).groups()
    monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    add_to_hub_cache(tmp_path / "hf" / "hub", hub_id, folders[name])
    data["model"].update(precision="fp32", device="cpu", max_sequence_length=16,
                         **{k: v for k, v in CASES[name][2].items() if k in ("height", "width", "frames")})
    data["reward"] = [{"use": "test-mean-red" if name == "wan-t2v" else "jpeg-compressibility"}]
    data["prompts"] = {"use": "file", "path": str(tmp_path / "prompts.txt"), "eval_count": 1}
    data["train"].update(iterations=1, prompts_per_iteration=1, checkpoint_every=1)
    data["eval"] = {"every": 1, "grid_images": 2, "steps": 4}
    data["backend"] = {"use": "torch", "device": "cpu"}
    data["plugins"] = {"modules": ["video_reward"]}
    data["logging"] = {"tensorboard": False, "progress": False}
    Trainer(parse(expand_env(data), load_registry(["video_reward"])), tmp_path / "run").run()
    train = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    group = data["strategy"]["group_size"]
    assert len(train) == 1 and train[0]["cost/leaves"] == group and train[0]["update/grad_norm"] > 0
    if "update/ratio_mean" in train[0]:  # the policy-gradient family: on policy at the first step
        assert abs(train[0]["update/ratio_mean"] - 1) < 1e-2
    elif "update/old_deviation" in train[0]:  # DiffusionNFT: one step, before which the old policy is θ itself
        assert train[0]["update/trained_noised_leaves"] == group * 9 and train[0]["update/old_deviation"] == 0.0
    elif "update/ema_kl" in train[0]:  # AWM: on policy, and at the first step its EMA is the base policy
        assert train[0]["update/trained_noised_leaves"] == group * 6 and train[0]["update/ratio_max"] == 1.0
        assert train[0]["update/ema_kl"] == train[0]["update/kl"]
    else:  # DGPO: four levels of the one group; before the first step the EMA reference is the weights
        assert train[0]["update/trained_noised_groups"] == 4 and train[0]["update/reference_gap"] == 0.0


def test_a_model_loads_by_hub_id_from_the_cache_offline(folders, tmp_path, monkeypatch):
    """The pipeline saved in a Hub cache (its real layout) loads by id with HF_HUB_OFFLINE=1 and
    holds the same weights as the folder; its latent grid is known from the cached configs."""
    from grpo.core.errors import UserError
    from grpo.testing.hub_cache import add_to_hub_cache

    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    options = {"height": 32, "width": 32}
    assert FluxPolicy.noise_grid_for({**options, "path": "tiny-org/flux"}) is None  # not cached: unknown, no error
    with pytest.raises(UserError) as e:
        make("flux", {"flux": "tiny-org/flux"})
    assert e.value.where == "model.path" and "hf download tiny-org/flux" in e.value.hint
    add_to_hub_cache(tmp_path / "hf" / "hub", "tiny-org/flux", folders["flux"])
    by_id, by_path = make("flux", {"flux": "tiny-org/flux"}), make("flux", folders)
    want = by_path.denoiser.state_dict()
    got = by_id.denoiser.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert FluxPolicy.noise_grid_for({**options, "path": "tiny-org/flux"}) == FluxPolicy.noise_grid_for(
        {**options, "path": str(folders["flux"])})
