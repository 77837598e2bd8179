"""fl_shadow: federated learning where a curious server attacks and clients defend."""

__version__ = "0.1.0"
