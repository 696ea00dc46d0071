"""ExactLine's engine: propagate line segments through a lowered network, splitting them into pieces.

A segment is carried as its breakpoints (positions ``t`` and the values of every live tensor there).
Between two breakpoints the network is affine in ``t``, so a ReLU input, a clamp bound or a max-pool
comparison can change sign at most once there: at the root, which becomes a new breakpoint. Values at
new breakpoints are interpolated, which is exact on an affine piece. Many segments travel together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gcert.errors import GcertError
from gcert.lowering import Activation, Add, Affine, Concat, Lowered, MaxPool

Tensor = torch.Tensor


class TooManyPieces(GcertError):
    """The segment split into more pieces than the budget allows."""


class MemoryLimit(TooManyPieces):
    """Holding the segment's pieces would take more memory than the budget allows."""


@dataclass
class Pieces:
    """Breakpoints of several segments, sorted by (segment, t), and the values live at them."""

    t: Tensor  # (P,) float64 in [0, 1]
    seg: Tensor  # (P,) long, non-decreasing
    values: dict[int, Tensor]  # value index -> (P, *shape); -1 is the network input
    max_bytes: float | None = None  # refuse to split past this much memory for the values (and their copies)

    @property
    def count(self) -> int:
        return int(self.t.numel())

    def same_segment(self) -> Tensor:
        """(P-1,) whether breakpoints i and i+1 bound a piece (belong to one segment)."""
        return self.seg[1:] == self.seg[:-1]

    def split(self, g: Tensor, extra: list[Tensor] | None = None, max_points: int | None = None) -> list[Tensor]:
        """Insert a breakpoint wherever a column of ``g`` (P, n) changes sign strictly inside a piece.

        ``g`` and every tensor in ``extra`` must be affine in ``t`` on each current piece; the
        interpolated ``extra`` tensors are returned (the stored values are updated in place).
        """
        extra = list(extra or [])
        if self.count < 2:
            return extra
        g = g.reshape(self.count, -1)
        a, b = g[:-1], g[1:]
        crossing = (a * b < 0) & self.same_segment().unsqueeze(1)
        if not bool(crossing.any()):
            return extra
        piece, col = crossing.nonzero(as_tuple=True)
        ga, gb = a[piece, col], b[piece, col]
        alpha = (ga / (ga - gb)).clamp(0.0, 1.0)
        alpha, order = torch.sort(alpha, stable=True)
        piece = piece[order]
        piece, order = torch.sort(piece, stable=True)
        alpha = alpha[order]
        keep = torch.ones_like(piece, dtype=torch.bool)
        keep[1:] = (piece[1:] != piece[:-1]) | (alpha[1:] != alpha[:-1])
        keep &= (alpha > 0) & (alpha < 1)
        piece, alpha = piece[keep], alpha[keep]
        if max_points is not None and self.count + piece.numel() > max_points:
            raise TooManyPieces(f"the segment split into more than {max_points - 1} pieces; raise max_pieces or use "
                                "a sound certifier (interval, crown)")
        if self.max_bytes is not None:
            per_point = 8 * (sum(v[0].numel() for v in self.values.values()) + sum(v[0].numel() for v in extra))
            need = 3 * per_point * (self.count + piece.numel())  # the values, and the copies interpolation makes
            if need > self.max_bytes:
                raise MemoryLimit(f"the segment's {self.count + piece.numel() - 1} pieces would need "
                                  f"~{need / 2**30:.2f} GB here")
        # Merged order: every old breakpoint i sorts before the new points inside piece i.
        old_key = torch.arange(self.count, dtype=torch.long)
        keys = torch.cat([old_key, piece])
        subkeys = torch.cat([torch.zeros(self.count, dtype=alpha.dtype), alpha])
        order = torch.sort(subkeys, stable=True).indices
        order = order[torch.sort(keys[order], stable=True).indices]
        total = self.count + piece.numel()
        place = torch.empty(total, dtype=torch.long)
        place[order] = torch.arange(total)  # where each old point, then each new one, lands
        old_place, new_place = place[: self.count], place[self.count :]

        def interpolate(v: Tensor) -> Tensor:
            # v_a + w (v_b - v_a), written straight into place (no concatenated copy to reorder)
            w = alpha.reshape(-1, *([1] * (v.dim() - 1))).to(v.dtype)
            a = v[piece]
            new = v[piece + 1].sub_(a).mul_(w).add_(a)
            out = v.new_empty((total, *v.shape[1:]))
            out.index_copy_(0, old_place, v)
            return out.index_copy_(0, new_place, new)

        self.t = interpolate(self.t)
        self.seg = torch.cat([self.seg, self.seg[piece]])[order]
        self.values = {k: interpolate(v) for k, v in self.values.items()}
        return [interpolate(v) for v in extra]


def start(lowered: Lowered, starts: Tensor, ends: Tensor) -> Pieces:
    """Breakpoints of S segments ``starts[s] -> ends[s]`` (each (S, *input_shape)) before any layer."""
    s = starts.shape[0]
    x = torch.stack([starts, ends], dim=1).reshape(2 * s, *starts.shape[1:]).to(torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64).repeat(s)
    seg = torch.arange(s).repeat_interleave(2)
    return Pieces(t, seg, {-1: x})


def propagate(lowered: Lowered, pieces: Pieces, stop: int | None = None, max_points: int | None = None,
              keep_input: bool = False) -> Pieces:
    """Run nodes ``0 .. stop-1`` (all by default), which must be piecewise linear, splitting as needed.

    Values no later node reads are dropped as soon as possible; the output stays, and with ``keep_input`` the
    network input too (the breakpoints' own coordinates, interpolated like every value).
    """
    stop = len(lowered.nodes) if stop is None else stop
    last = lowered.last_use()
    input_last = max((k for k, n in enumerate(lowered.nodes) if -1 in n.inputs), default=-1)
    for k in range(stop):
        node = lowered.nodes[k]
        op = node.op
        args = [pieces.values[j] for j in node.inputs]
        if isinstance(op, Affine | Add | Concat):
            out = op(*args)
        elif isinstance(op, Activation):
            out = _activation(pieces, op, node.inputs[0], max_points)
        elif isinstance(op, MaxPool):
            out = _maxpool(pieces, op, node.inputs[0], max_points)
        else:  # pragma: no cover - the lowering produces no other op
            raise TypeError(f"unknown op {op!r}")
        pieces.values[k] = out
        for j in set(node.inputs):
            if j >= 0 and last[j] <= k and j != lowered.output:
                pieces.values.pop(j, None)
        if k >= input_last and lowered.output != -1 and not keep_input:
            pieces.values.pop(-1, None)
    return pieces


def _activation(pieces: Pieces, op: Activation, src: int, max_points: int | None) -> Tensor:
    if not op.piecewise_linear:
        raise GcertError(f"{op.kind} is not piecewise linear; exact propagation cannot pass it")
    x = pieces.values[src]
    flat = x.reshape(x.shape[0], -1)
    if op.kind == "hardtanh":
        gs = [flat - op.lo] if op.lo != -float("inf") else []
        gs += [flat - op.hi] if op.hi != float("inf") else []
        g = torch.cat(gs, dim=1) if gs else flat[:, :0]
    else:
        g = flat
    pieces.split(g, max_points=max_points)
    return op(pieces.values[src])


def _maxpool(pieces: Pieces, op: MaxPool, src: int, max_points: int | None) -> Tensor:
    """Max over each window as a tree of pairwise maxima, splitting where a pair swaps order."""
    x = pieces.values[src]
    floor = float(x.min()) - 1.0 - abs(float(x.min()))  # below every value on every piece: a finite -inf
    cand = op.windows(torch.nan_to_num(x, neginf=floor))
    cand = torch.where(torch.isinf(cand), torch.full_like(cand, floor), cand)
    while cand.shape[-1] > 1:
        if cand.shape[-1] % 2:
            cand = torch.cat([cand, cand[..., -1:]], dim=-1)
        a, b = cand[..., 0::2], cand[..., 1::2]
        a, b = pieces.split(a - b, [a, b], max_points=max_points)
        cand = torch.maximum(a, b)
    c = x.shape[1]
    return cand[..., 0].reshape(cand.shape[0], c, *op.out_hw)
