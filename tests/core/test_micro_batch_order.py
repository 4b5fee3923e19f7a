"""``train.micro_batch_order``: the same optimizer steps, their units listed chain by chain or step by
step (the released Flow-GRPO trainers' micro-batches: one step of several chains), checked on a hand
layout."""

import torch

from grpo.core.update import partition

# 3 chains of 3 steps each, listed step-major as the engine's layout lists them: (major, chain)
MAJOR = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
CHAIN = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])


def _pairs(positions: torch.Tensor) -> list[tuple[int, int]]:
    return [(int(MAJOR[i]), int(CHAIN[i])) for i in positions]


def test_chains_listed_step_by_step():
    by_chain = partition(MAJOR, CHAIN, 1, "chains", torch.Generator().manual_seed(3))
    by_step = partition(MAJOR, CHAIN, 1, "chains", torch.Generator().manual_seed(3), "step")
    chains = [c for _, c in _pairs(by_chain[0])][::3]  # the drawn order of the chains
    assert _pairs(by_chain[0]) == [(m, c) for c in chains for m in range(3)]
    assert _pairs(by_step[0]) == [(m, c) for m in range(3) for c in chains]


def test_edges_keep_their_steps_and_are_sorted_by_step():
    by_chain = partition(MAJOR, CHAIN, 2, "edges", torch.Generator().manual_seed(5))
    by_step = partition(MAJOR, CHAIN, 2, "edges", torch.Generator().manual_seed(5), "step")
    for plain, sorted_ in zip(by_chain, by_step, strict=True):
        assert sorted(plain.tolist()) == sorted(sorted_.tolist())  # the same units in each optimizer step
        majors = MAJOR[sorted_].tolist()
        assert majors == sorted(majors)
        # within a step, the shuffled order is kept
        for m in set(majors):
            assert [int(i) for i in sorted_ if MAJOR[i] == m] == [int(i) for i in plain if MAJOR[i] == m]
