"""The base class of the modules an Architecture builds, with the optional fast paths core asks them for.

A module that does not derive from :class:`Net` (any ``torch.nn.Module`` mapping inputs (n, ...) to outputs
(n,)) gets every default: the generic vmap ensemble, no infinite-width kernels, the generic autograd
Hessian. :func:`fast_paths` is how core reads them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .ensemble_net import EnsembleNet


class Net(torch.nn.Module):
    """A net f~ whose class may override the fast paths below; each default says what core does without it."""

    #: the batched form of M such nets (an :class:`dlphase.ensemble_net.EnsembleNet` subclass with hand-written
    #: forward, backward and NTK); default: the generic one by torch.func.vmap
    ensemble_class: ClassVar[type[EnsembleNet]] = EnsembleNet

    def infinite_kernels(self, x1: torch.Tensor, x2: torch.Tensor | None = None,
                         quadrature: int = 24) -> dict[str, torch.Tensor] | None:
        """The h -> infinity kernels of this net's architecture between the rows of x1 and x2 (x1 if None):
        {"nngp": covariance of f~ at initialisation, "ntk": the NTK}; None (the default): none is known, and the
        kernels ``ntk_infinite`` and ``nngp_infinite`` are refused."""
        return None

    def curvature(self, x: torch.Tensor) -> Any:
        """Closed-form per-sample gradients, Hessians and Hessian-vector products of f~ on x (the interface of
        :class:`dlphase.plugins.architectures.fc_hessian.FCCurvature`), which the ``hessian`` observable uses; None (the
        default): its generic autograd path."""
        return None

    def first_layer(self, params: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The dense first layer as (W, v): W (h, d) the weight vectors of the first-layer neurons on the
        flattened input, v (h,) >= 0 the size of each neuron's outgoing weights (|W2_i| for one hidden layer),
        from the net's parameters or from ``params`` (a list in ``parameters()`` order, a trajectory's
        snapshot); None (the default): the net has no dense first layer, and the ``first_layer`` observable
        refuses it."""
        return None

    def offers(self, name: str) -> bool:
        """Whether this net's class overrides the fast path ``name``."""
        return getattr(type(self), name) is not getattr(Net, name)


def parameters_by_name(net: torch.nn.Module, params: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The net's parameters by name, or the tensors of ``params`` (in ``parameters()`` order) under those names."""
    named = dict(net.named_parameters())
    if params is None:
        return named
    if len(params) != len(named):
        raise ValueError(f"{len(params)} tensors given for a net of {len(named)} parameters")
    return dict(zip(named, params))


#: a net with every default, standing in for modules that do not derive from Net
_DEFAULTS = Net()


def fast_paths(net: torch.nn.Module) -> Net:
    """``net`` itself if it is a :class:`Net`, else a stand-in with every default."""
    return net if isinstance(net, Net) else _DEFAULTS
