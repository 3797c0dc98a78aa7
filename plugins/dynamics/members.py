"""The bookkeeping of a batch of members: their per-member tensors, and members leaving the batch.

Every per-member quantity of an engine (stacked parameters, outputs, time steps, counters) is a tensor with
the members along dim 0, or a list of such tensors. A :class:`Batch` holds them by name, so that a member that
stops leaves every one of them in one call, and none is forgotten.
"""

from __future__ import annotations

import torch


class Batch:
    """Named per-member state: tensors (M, ...) or lists of them, members along dim 0; ``ids`` maps batch
    positions to member indices."""

    def __init__(self, ids, **state):
        self.__dict__["ids"] = list(ids)
        self.__dict__["_names"] = []
        for name, value in state.items():
            setattr(self, name, value)

    def __setattr__(self, name, value):
        if name not in self._names:
            self._names.append(name)
        self.__dict__[name] = value

    def __len__(self) -> int:
        return len(self.ids)

    def keep(self, positions) -> None:
        """Keep the batch positions ``positions`` (ascending), in that order, in every tensor held."""
        positions = list(positions)
        device = next((v.device for v in map(self.__dict__.get, self._names) if isinstance(v, torch.Tensor)), None)
        index = torch.tensor(positions, dtype=torch.long, device=device)
        for name in self._names:
            value = self.__dict__[name]
            if isinstance(value, torch.Tensor):
                self.__dict__[name] = value.index_select(0, index)
            elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
                self.__dict__[name] = [v.index_select(0, index) for v in value]
        self.__dict__["ids"] = [self.ids[j] for j in positions]

    def drop(self, gone) -> None:
        """Remove the batch positions ``gone``."""
        gone = set(gone)
        self.keep(j for j in range(len(self)) if j not in gone)


def rows(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-member (M,) tensor shaped to broadcast against a stacked (M, ...) tensor, in its dtype."""
    return v.reshape((-1,) + (1,) * (like.dim() - 1)).to(like.dtype)


def choose(mask: torch.Tensor, new, old):
    """Per member, ``new`` where ``mask`` (M,) holds, else ``old``: tensors (M, ...) or lists of them."""
    if isinstance(new, list):
        return [choose(mask, a, b) for a, b in zip(new, old)]
    return torch.where(mask.reshape((-1,) + (1,) * (new.dim() - 1)), new, old)


def sq(ts) -> torch.Tensor:
    """Per-member squared norms of stacked tensors, (M,)."""
    return sum(t.reshape(len(t), -1).square().sum(1) for t in ts)
