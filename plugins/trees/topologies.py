"""Built-in tree topologies."""

from __future__ import annotations

from typing import Annotated

from grpo.core.errors import UserError
from grpo.core.schema import Doc, Range
from grpo.core.tree import TreePlan


class Fan:
    """A root that fans out into `group_size` independent chains at the first step (DanceGRPO).

    The chains share the initial noise; from step 0 on they differ. With `noise_scale` λ = 1 this
    is exactly DanceGRPO's group of G samples.
    """

    def __init__(
        self,
        *,
        group_size: Annotated[int, Range(ge=2), Doc("chains per prompt G")] = 16,
        noise_scale: Annotated[float, Range(gt=0), Doc("λ of the first step's noise")] = 1.0,
    ) -> None:
        self.group_size, self.noise_scale = group_size, noise_scale

    def plan(self, steps: int, iteration: int = 0) -> TreePlan:
        if steps < 2:  # a split at the last step: every chain decodes from the same x̂0
            raise UserError(f"a fan of chains needs at least 2 steps, not {steps}: with one, its chains are identical",
                            where="sampler.steps", hint="use sampler.steps >= 2")
        branch = (self.group_size,) + (1,) * (steps - 1)
        scale = (self.noise_scale,) + (1.0,) * (steps - 1)
        return TreePlan(branch, scale, (True,) * steps)


class Chains:
    """`group_size` chains per prompt, each from its own initial noise (Flow-GRPO's group).

    The tree has `group_size` roots and never splits, so the chains share nothing. With
    ``same_latent`` they start from one initial noise instead and differ from the first step on
    (Flow-GRPO's ``same_latent`` option; the same tree as ``fan``).
    """

    def __init__(
        self,
        *,
        group_size: Annotated[int, Range(ge=2), Doc("chains per prompt G")] = 24,
        same_latent: Annotated[bool, Doc("one initial noise for the prompt's chains instead of G")] = False,
    ) -> None:
        self.group_size, self.same_latent = group_size, same_latent

    def plan(self, steps: int, iteration: int = 0) -> TreePlan:
        if self.same_latent:
            return Fan(group_size=self.group_size).plan(steps, iteration)
        return TreePlan((1,) * steps, (1.0,) * steps, (True,) * steps, roots=self.group_size)
