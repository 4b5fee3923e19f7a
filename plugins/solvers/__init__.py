"""The built-in deterministic solvers: Euler and DPM-Solver++."""
