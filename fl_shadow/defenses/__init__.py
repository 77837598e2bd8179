"""Client-side defenses, one module each, declared in :data:`DEFENSES`.

Adding a defense: one module here with a :class:`Defense` subclass, its params dataclass
(:func:`fl_shadow.config.settings`) and ``@register_defense("name", Params, ...)`` on the
class (its facts: needs, state, private model, the adaptive attacker's model), plus its import
line below.
"""

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
from fl_shadow.defenses import input_noise  # noqa: F401  (registers)
from fl_shadow.defenses import mixup  # noqa: F401  (registers)
from fl_shadow.defenses.base import (
    DEFENSES,
    Defense,
    DefenseContext,
    DefenseModel,
    DefenseSpec,
    Undefended,
    build_defense,
    clip_differentiably,
    describe_defense,
    register_defense,
)

__all__ = ["DEFENSES", "Defense", "DefenseContext", "DefenseModel", "DefenseSpec", "Undefended",
           "build_defense", "clip_differentiably", "describe_defense", "register_defense"]
