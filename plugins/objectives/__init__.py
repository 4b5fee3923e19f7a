"""The built-in objectives: the clipped likelihood ratio of the policy-gradient family."""
