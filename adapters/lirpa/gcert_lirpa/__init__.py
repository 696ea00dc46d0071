"""gcert-lirpa: auto_LiRPA 0.3 bound propagation (CROWN, alpha-CROWN, IBP) as gcert certifiers.

The plugin module is :mod:`gcert_lirpa.plugin`, registered through the ``gcert`` entry-point group.
"""

__version__ = "0.1.0"
