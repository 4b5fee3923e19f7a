"""An example grpo plugin: one component of each of four kinds, registered in ``plugin.py``."""

__version__ = "0.1.0"
