"""DeepCert's Table 1 on gcert: certified L-inf / L2 / L1 radius with the fine-grained relaxation vs the tangent one.

Small sigmoid, tanh and arctan MLPs trained here on scikit-learn's digits, plus the VNN-COMP sigmoid network
on MNIST when ../shared/conformance is present. The radius is ``gcert tolerance`` with ``deeppoly``
(bisection on the ball's radius; each radius is certified, so the reported value is a certified lower bound).

    python benchmarks/deepcert.py [--inputs 10] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from _report import write_report
from torch import nn

from gcert import zoo
from gcert.data import conformance_dir, load_inputs
from gcert.plugins import PluginSettings
from gcert.runner import Context, RunConfig

MAX_RADIUS = {"linf": 0.2, "l2": 2.0, "l1": 10.0}
CONFORMANCE = conformance_dir()


class Atan(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.atan(x)


def digits_mlp(act: type[nn.Module], seed: int = 0, epochs: int = 60) -> tuple[nn.Module, float]:
    from gcert_zoo.recipes import digits_split

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 50), act(), nn.Linear(50, 50), act(), nn.Linear(50, 10))
    xtr, ytr, xte, yte = (torch.from_numpy(a) for a in digits_split(seed))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xtr), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(net(xtr[idx]), ytr[idx]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return net, float((net(xte).argmax(1) == yte).float().mean())


def radii(model: nn.Module | str, data: object, relaxation: str, norm: str, steps: int) -> list[float]:
    config = RunConfig(mutations=(norm,), certifiers=("deeppoly",), model=model, data=data,
                       deltas=(MAX_RADIUS[norm],), tolerance_steps=steps,
                       options={"deeppoly": {"relaxation": relaxation}}, plugins=PluginSettings(autoload=False))
    ctx = Context(config)
    return [ctx.solve(task).max_delta or 0.0 for task in ctx.tasks()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    digits = load_inputs(zoo.samples_path(zoo.default_network()), args.inputs)
    networks: list[tuple[str, nn.Module | str, object]] = []
    for name, act in (("digits sigmoid 2x50", nn.Sigmoid), ("digits tanh 2x50", nn.Tanh),
                      ("digits arctan 2x50", Atan)):
        net, acc = digits_mlp(act)
        networks.append((f"{name} (acc {acc:.3f})", net, digits))
    sigmoid_net = CONFORMANCE / "vnncomp2021" / "eran" / "nets" / "ffnnSIGMOID__Point_6x200.onnx"
    if sigmoid_net.exists():
        mnist = load_inputs(CONFORMANCE / "mnist_test_100.csv", args.inputs)
        networks.append(("VNN-COMP ffnnSIGMOID 6x200 (MNIST)", str(sigmoid_net), mnist))
    rows = []
    for name, model, data in networks:
        for norm in MAX_RADIUS:
            fine = radii(model, data, "deepcert", norm, args.steps)
            classic = radii(model, data, "tangent", norm, args.steps)
            mean_fine, mean_classic = statistics.mean(fine), statistics.mean(classic)
            rows.append({"network": name, "norm": norm, "DeepCert radius": mean_fine, "tangent radius": mean_classic,
                         "gain %": 100 * (mean_fine / mean_classic - 1) if mean_classic > 0 else float("nan"),
                         "inputs better / worse": f"{sum(f > c for f, c in zip(fine, classic, strict=True))} / "
                                                  f"{sum(f < c for f, c in zip(fine, classic, strict=True))}"})
            print(rows[-1], flush=True)
    columns = ["network", "norm", "DeepCert radius", "tangent radius", "gain %", "inputs better / worse"]
    _, md = write_report("deepcert", "Certified radius: DeepCert's fine-grained relaxation vs the tangent one",
                         columns, rows, notes=f"deeppoly, mean certified radius over {args.inputs} inputs (bisection, "
                         f"{args.steps} steps, up to {MAX_RADIUS}); misclassified inputs count 0.")
    print(md.read_text())


if __name__ == "__main__":
    main()
