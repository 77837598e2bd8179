"""fl_shadow: federated learning where a curious server attacks and clients defend."""

# First, before any module of the package imports torch: OMP_WAIT_POLICY=PASSIVE unless the
# environment chose otherwise (the OpenMP runtime reads it when torch loads; see
# fl_shadow.threads). Importing any project module runs this.
from fl_shadow.threads import passive_wait

passive_wait()

__version__ = "0.1.0"
