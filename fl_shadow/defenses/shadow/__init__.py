"""The Shadow Defense (registered as ``shadow``): see :mod:`.defense` for the method.

- :mod:`.fine_tune`: pseudo local training and the shadow's objective;
- :mod:`.noise`: the noise map, its momentum, foreground suppression and scaling;
- :mod:`.defense`: the :class:`~fl_shadow.defenses.Defense` that runs them around local training.
"""

from fl_shadow.defenses.shadow.defense import ShadowDefense, ShadowParams

__all__ = ["ShadowDefense", "ShadowParams"]
