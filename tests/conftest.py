"""Shared test setup."""

import torch

# Small tensors gain nothing from intra-op threads, and when anything else runs on the machine
# (a second pytest, a federation) spinning thread pools make such tests up to 100x slower.
torch.set_num_threads(1)
