"""gcert: certify neural networks against semantic image mutations (GCert, USENIX Security 2023).

The host: hook specs, plugin manager, problem and certificate types, runner and CLI.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("gcert")

from gcert.api import certify  # noqa: E402
from gcert.certificate import Certificate, Witness, read_certificates  # noqa: E402
from gcert.contracts import Certifier, GeneratorSpec, Mutation, NoOptions, Outcome  # noqa: E402
from gcert.plugins import PluginSettings, get_plugin_manager, load_registry  # noqa: E402
from gcert.problem import ComposedNetwork, Problem  # noqa: E402
from gcert.regions import Box, LpBall, Region, Segment  # noqa: E402
from gcert.spec import Spec  # noqa: E402

__all__ = [
    "Box", "Certificate", "Certifier", "ComposedNetwork", "GeneratorSpec", "LpBall", "Mutation", "NoOptions",
    "Outcome", "PluginSettings", "Problem", "Region", "Segment", "Spec", "Witness", "__version__", "certify",
    "get_plugin_manager", "hookimpl", "load_registry", "read_certificates",
]
