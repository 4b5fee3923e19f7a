"""Train only the edges whose advantage is largest in magnitude: they carry most of the signal."""

from typing import Annotated

import torch
from grpo.core.pruner import PruneContext
from grpo.core.schema import Doc, Range
from grpo.core.tree import Advantages, EdgeSet, Rollout


class TopAdvantage:
    """At every step, keep the share `keep` of the given edges with the largest |advantage|."""

    def __init__(self, *, keep: Annotated[float, Range(gt=0, le=1), Doc("share of each step's edges kept")] = 0.5) -> None:
        self.keep = keep

    def __call__(self, rollout: Rollout, advantages: Advantages, edges: EdgeSet, ctx: PruneContext) -> EdgeSet:
        masks = []
        for mask, adv in zip(edges.masks, advantages.values, strict=True):
            given = torch.nonzero(mask).flatten()
            n_keep = int(round(self.keep * given.numel()))
            order = torch.argsort(adv[given].abs(), descending=True, stable=True)
            out = torch.zeros_like(mask)
            out[given[order[:n_keep]]] = True
            masks.append(out)
        return EdgeSet(masks)
