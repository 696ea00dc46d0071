"""Regulated generators (GCert section 5): continuity regulation, the piecewise-linear output layer,
mutating and local directions from the Jacobian, inversion, and mutation strips.
"""

from __future__ import annotations

from gcert.generators.directions import (
    DEFAULT_RANK_THRESHOLD,
    Directions,
    LocalDirections,
    NullSpaceEmptyError,
    jacobian,
    local_directions,
    mutating_directions,
    project_local,
    svd_split,
)
from gcert.generators.inversion import Inversion, invert, reconstruction_error
from gcert.generators.local import LocalEntry, is_local_entry, load_local_entry
from gcert.generators.regulate import (
    ContinuityReport,
    PiecewiseLinearOutput,
    continuity_loss,
    fold_batchnorm,
    measure_continuity,
)
from gcert.generators.render import Strips, mutation_strips, save_grid, segment_images

__all__ = [
    "DEFAULT_RANK_THRESHOLD", "ContinuityReport", "Directions", "Inversion", "LocalDirections", "LocalEntry",
    "NullSpaceEmptyError", "PiecewiseLinearOutput", "Strips", "continuity_loss", "fold_batchnorm", "invert",
    "is_local_entry", "jacobian", "load_local_entry", "local_directions", "measure_continuity", "mutating_directions",
    "mutation_strips", "project_local", "reconstruction_error", "save_grid", "segment_images", "svd_split",
]
