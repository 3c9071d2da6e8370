"""ltray: transferring learning trajectories of neural networks (Chijiwa et al., ICLR 2024)."""

__version__ = "0.1.0"
