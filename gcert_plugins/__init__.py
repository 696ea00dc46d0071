"""gcert's built-in plugins: each module is an ordinary plugin, registered through the ``gcert`` entry points."""
