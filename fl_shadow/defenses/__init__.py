"""Client-side defenses, one module each, registered by name in :data:`DEFENSES`."""

from fl_shadow.defenses import none  # noqa: F401  (registers)
from fl_shadow.defenses import sparsification  # noqa: F401  (registers)
from fl_shadow.defenses import clipping  # noqa: F401  (registers)
from fl_shadow.defenses import dp  # noqa: F401  (registers)
from fl_shadow.defenses import soteria  # noqa: F401  (registers)
from fl_shadow.defenses import outpost  # noqa: F401  (registers)
from fl_shadow.defenses import censor  # noqa: F401  (registers)
from fl_shadow.defenses import shadow  # noqa: F401  (registers)
from fl_shadow.defenses import fedkl  # noqa: F401  (registers)
from fl_shadow.defenses import latent_minimax  # noqa: F401  (registers)
from fl_shadow.defenses.base import (
    DEFENSES,
    Defense,
    DefenseContext,
    build_defense,
    register_defense,
)

__all__ = ["DEFENSES", "Defense", "DefenseContext", "build_defense", "register_defense"]
