from __future__ import annotations

import torch

pytest_plugins = ["gcert.testing"]

# One thread: the ops here are small, and tests also spawn pool workers; several OpenMP teams on 2 cores
# oversubscribe badly (seen: a 45 ms 8x8 conv2d under load).
torch.set_num_threads(1)

