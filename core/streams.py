"""Every random stream of a run, derived from ``(train.seed, iteration, stream)`` alone.

So a run resumed from a checkpoint draws exactly what an uninterrupted run would, a tree's noise
does not depend on which rank samples it, and two runs of the same seed train on the same prompts.

| stream | what draws from it |
|---|---|
| 0 | the iteration's prompts, then the update's shuffles of edges into optimizer steps |
| 1 | the initial noise shared by the iteration's trees (``train.init_same_noise``) |
| 2 + rank | the pruners' draws (one stream per rank) |
| 1,000,000 + t | the noise of tree t (by its index in the iteration's prompt list) |
| 2,000,000 + t | the objective's draws for the units of tree t (noise levels, noise of a forward process) |
"""

from __future__ import annotations

import numpy as np
import torch

PROMPTS = 0
SHARED_NOISE = 1
PRUNERS = 2
TREES = 1_000_000
UNITS = 2_000_000


def iteration_generator(seed: int, iteration: int, stream: int = PROMPTS) -> torch.Generator:
    """A CPU generator determined by (seed, iteration, stream)."""
    state = np.random.SeedSequence([seed, iteration, stream]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]) >> 1)


def tree_generators(seed: int, iteration: int, trees: range) -> list[torch.Generator]:
    """One generator per tree of the iteration (by its index in the iteration's prompt list)."""
    return [iteration_generator(seed, iteration, TREES + t) for t in trees]


def unit_generators(seed: int, iteration: int, trees: range) -> list[torch.Generator]:
    """One generator per tree of the iteration for the objective's draws when it builds its units."""
    return [iteration_generator(seed, iteration, UNITS + t) for t in trees]


def pruner_generator(seed: int, iteration: int, rank: int) -> torch.Generator:
    """The pruners' generator of one rank (on one rank, the same stream every time)."""
    return iteration_generator(seed, iteration, PRUNERS + rank)


def shared_noise(seed: int, iteration: int, shape: tuple[int, ...], trees: int, roots: int = 1) -> torch.Tensor:
    """(trees · roots, *shape): `roots` independent standard normal initial noises, the same in every tree."""
    noise = torch.randn((roots, *shape), generator=iteration_generator(seed, iteration, SHARED_NOISE))
    return noise.repeat(trees, *([1] * len(shape)))
