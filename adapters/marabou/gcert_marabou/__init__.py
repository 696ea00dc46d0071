"""gcert-marabou: the Marabou SMT-based verifier (maraboupy 2.0) as gcert's certifier ``marabou``.

The plugin module is :mod:`gcert_marabou.plugin`, registered through the ``gcert`` entry-point group.
"""

__version__ = "0.1.0"
