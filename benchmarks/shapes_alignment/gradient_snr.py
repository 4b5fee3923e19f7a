"""How many trees does one policy-gradient direction need? The signal and noise of a recipe's gradient.

    OMP_NUM_THREADS=1 python benchmarks/shapes_alignment/gradient_snr.py recipes/shapes_dance.toml \\
        --trees 48 [--set KEY=VALUE]... [--label NAME] [--results benchmarks/shapes_alignment/gradient_snr.md]

One rollout of `--trees` prompts (one tree each, the recipe's strategy, sampler and rewards), its
advantages, then, for every tree t and every trained step k, the gradient g_{t,k} of the loss at
ratio 1, ``−Σ A·log π``, over the tree's edges at step k. Trees are independent draws, so for a set
S of steps with G_t = Σ_{k∈S} g_{t,k}:

- ``|E g|²`` is estimated without bias by the mean dot product of distinct trees,
  ``(|Σ_t G_t|² − Σ_t |G_t|²) / (T(T−1))``;
- the noise, ``tr Cov(G)``, by ``mean_t |G_t|² − |E g|²``;
- ``trees for SNR 1 = tr Cov / |E g|²``: how many trees an average gradient needs before its
  expected direction is as large as its noise. An iteration of the shapes recipes has 8-16 trees.

An estimate of |E g|² below about ``2·tr Cov / T`` is indistinguishable from zero (the
estimator's own noise); such rows say "> N" with N the largest value the run can resolve.
Appends a table to `--results` (Markdown).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
from benchmarks.shapes_alignment.make_figures import machine  # noqa: E402
from grpo.cli.common import load_recipe  # noqa: E402
from grpo.core.components import PromptCache, build  # noqa: E402
from grpo.core.edges import EdgeUnits, reevaluate  # noqa: E402
from grpo.core.rollout import rollout  # noqa: E402
from grpo.core.tree import EdgeSet  # noqa: E402

STEP_SETS = {"steps 0-2": range(0, 3), "steps 3-5": range(3, 6), "steps 6-9": range(6, 10), "steps 0-9": range(0, 10)}


def signal_and_noise(per_tree: torch.Tensor) -> tuple[float, float, float]:
    """(|E g|², tr Cov, the estimator's standard error of |E g|²) from (T, D) per-tree gradients."""
    t = per_tree.shape[0]
    total = per_tree.sum(0)
    squares = (per_tree.double() ** 2).sum(1)
    mu2 = (float(total.double() @ total.double()) - float(squares.sum())) / (t * (t - 1))
    noise = float(squares.mean()) - mu2
    return mu2, noise, math.sqrt(2.0 / (t * (t - 1))) * noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("--trees", type=int, default=48)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--label", default="")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "gradient_snr.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe, _ = load_recipe(args.recipe, [*args.sets, f"train.prompts_per_iteration={args.trees}"], env=True)
    c = build(recipe)
    policy, sampler = c.policy, c.sampler
    params = policy.trainable_parameters()
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(c.train_prompts), generator=g)[: args.trees]
    prompts = [c.train_prompts[i] for i in idx.tolist()]
    cond = PromptCache(policy).encode(prompts)
    plan = c.parts.plan(sampler.steps, 0)
    init = None
    if recipe.train.init_same_noise:
        init = torch.randn((1, *policy.latent_shape), generator=g).expand(args.trees, *policy.latent_shape).clone()
    ro = rollout(policy, sampler, plan, cond, generator=g, max_batch=recipe.train.rollout_batch, init_noise=init,
                 solvers=c.parts.solvers, keep=c.parts.keep)
    leaf_prompts = [prompts[i] for i in ro.tree[-1].tolist()]
    scores, report = c.rewards.score(policy.decode(ro.final), leaf_prompts)
    adv = c.rewards.advantages(c.parts.advantage, recipe.strategy.advantage.entry, ro, scores)
    batch = EdgeUnits.gather(ro, adv, EdgeSet.all_stochastic(ro))
    tree_of = torch.stack([ro.tree[k + 1][c] for k, c in zip(batch.step.tolist(), batch.child.tolist(), strict=True)])
    size = sum(p.numel() for p in params)
    per_set = {name: torch.zeros(args.trees, size) for name in STEP_SETS}
    for t in range(args.trees):
        for k in range(max(max(s) for s in STEP_SETS.values()) + 1):
            sel = torch.nonzero((tree_of == t) & (batch.step == k)).flatten()
            if sel.numel() == 0:
                continue
            mb = batch.take(sel)
            if float(mb.advantage.abs().sum()) == 0.0:
                continue
            log_prob = reevaluate(policy, sampler, ro, cond, mb, c.parts.keep.split_logprob).log_prob
            grads = torch.autograd.grad(-(mb.advantage * log_prob).sum(), params)
            flat = torch.cat([x.reshape(-1) for x in grads])
            for name, steps in STEP_SETS.items():
                if k in steps:
                    per_set[name][t] += flat
    first = recipe.rewards[0].label
    leaf = report[first].view(args.trees, -1)
    label = args.label or " ".join(args.sets) or "the recipe"
    lines = [f"## {label}", "",
             f"`{args.recipe}` {' '.join('--set ' + s for s in args.sets)}: {args.trees} trees of {plan.leaves} leaves; "
             f"reward `{first}` mean {float(leaf.mean()):.3f}, {float((leaf.std(1) > 0).float().mean()):.0%} of trees "
             f"with any spread. Machine: {machine()}.", "",
             "| steps | \\|E g\\|² | ± (1 s.e.) | tr Cov | trees for SNR 1 |", "|---|---|---|---|---|"]
    for name, grads in per_set.items():
        mu2, noise, se = signal_and_noise(grads)
        if mu2 > 2 * se:
            needed = f"{noise / mu2:.0f}"
        else:
            needed = f"> {noise / (2 * se):.0f} (signal not resolved)"
        lines.append(f"| {name} | {mu2:+.2e} | {se:.1e} | {noise:.2e} | {needed} |")
    text = "\n".join(lines) + "\n\n"
    print(text)
    if not args.results.exists():
        args.results.write_text("# Signal and noise of the policy gradient on the shapes world\n\n"
                                "Measured with `benchmarks/shapes_alignment/gradient_snr.py` (its docstring "
                                "defines every column).\n\n")
    with args.results.open("a") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
