"""tinystories: the TinyStories method (Eldan & Li, 2023) as a toolkit."""

__version__ = "0.1.0"
