"""The client side: the hospitals' Flower clients and their mods."""

import fl_shadow  # noqa: F401  (first: OMP_WAIT_POLICY before torch loads; fl_shadow.threads)
