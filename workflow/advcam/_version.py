"""advcam's version, in a module of its own: every output records it, and reading it imports nothing else."""

__version__ = "0.1.0"
