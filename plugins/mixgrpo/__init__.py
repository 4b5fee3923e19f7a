"""MixGRPO (Li et al. 2025) as a composition of registered parts."""
