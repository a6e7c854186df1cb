"""Deprecated: moved to :mod:`vaedeblend.simulation.field` (the simulator is one package); this
alias warns and forwards for one release."""

from vaedeblend._deprecated import moved_module

__getattr__ = moved_module(__name__, "vaedeblend.simulation.field")
