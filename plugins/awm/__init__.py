"""Advantage Weighted Matching as a preset of parts."""
