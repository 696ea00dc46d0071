import gcert_vignette
import torch

pytest_plugins = ["gcert.testing"]


def test_vignette_registers_and_darkens_corners_only(gcert_registry):
    reg = gcert_registry(gcert_vignette)
    assert reg.origin("mutation", "vignette") == "gcert_vignette"
    image = torch.ones(1, 5, 5)
    d = reg.mutation("vignette").direction(None, image)
    assert d[0, 2, 2] == 0 and d[0, 0, 0] < 0
