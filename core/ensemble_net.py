"""M nets of one architecture and width as one batched computation over stacked parameters.

``params[i]`` stacks the members' i-th parameter (in ``net.parameters()`` order) along a leading
dim M. ``forward`` gives the outputs f~ of every member, shape (M, n); ``backward`` gives, for
output cotangents dout (M, n), every member's gradient sum_mu dout[m, mu] grad f~_m(x_mu). Each
member's numbers depend only on its own parameters, so a member trained in an ensemble follows the
same trajectory as alone (a single run is an ensemble of one), to rounding: torch's vectorised kernels
round a member's slice differently where the batch's shape moves a tensor's tail or a thread's chunk edge
(docs/reproducibility.md).

The generic class works for any module through torch.func.vmap; architectures give faster ones by
setting :attr:`dlphase.Net.ensemble_class` on their module class (see ``dlphase.plugins.architectures.fc``).
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Sequence

import torch


class EnsembleNet:
    """Batched forward and backward of M nets over stacked parameters (generic: torch.func.vmap)."""

    #: whether sigma' jumps (relu): integrators then freeze the slopes of :meth:`slopes` past kinks
    kinked: bool = False

    def __init__(self, nets: Sequence[torch.nn.Module]):
        self.template = nets[0]
        self.names = [name for name, _ in nets[0].named_parameters()]

    @functools.cached_property
    def base(self) -> torch.nn.Module:
        """The module without its parameters' storage (on the meta device), for torch.func.functional_call."""
        return copy.deepcopy(self.template).to("meta")

    def elements_per_member(self, n: int) -> int:
        """Size of one member's widest activation on n inputs (sets how many members share a pass).
        Generic guess: n sqrt(N); subclasses that know their layers say exactly."""
        return int(n * sum(p.numel() for p in self.template.parameters()) ** 0.5)

    def stack(self, nets: Sequence[torch.nn.Module]) -> list[torch.Tensor]:
        """The members' parameters as stacked tensors (copies)."""
        return [torch.stack([p.detach() for p in ps]) for ps in zip(*(n.parameters() for n in nets))]

    def unstack(self, params: Sequence[torch.Tensor], j: int, net: torch.nn.Module) -> None:
        """Copy member ``j`` of ``params`` into ``net``'s parameters."""
        with torch.no_grad():
            for p, v in zip(net.parameters(), params):
                p.copy_(v[j])

    def forward(self, params: Sequence[torch.Tensor], x: torch.Tensor, grad: bool = False) -> tuple[torch.Tensor, Any]:
        """Outputs (M, n); with ``grad`` also a context for :meth:`backward`."""
        from torch.func import functional_call, vmap

        names = self.names

        def one(*ps):
            return functional_call(self.base, dict(zip(names, ps)), (x,))

        if not grad:
            with torch.no_grad():
                return vmap(one)(*params), None
        leaves = [p.detach().requires_grad_(True) for p in params]
        with torch.enable_grad():
            out = vmap(one)(*leaves)
        return out.detach(), (leaves, out)

    def ntk(self, params: Sequence[torch.Tensor], x1: torch.Tensor, x2: torch.Tensor | None = None,
            chunk: int = 256) -> torch.Tensor:
        """Every member's empirical NTK Theta(x, x') = grad_theta f~(x) . grad_theta f~(x'), (M, n1, n2).

        Generic: per-sample gradients by torch.func (vmap of grad over the points), ``chunk`` points at
        a time, so memory holds at most 2 chunk N numbers per member. Architectures give faster ones
        (fc: layer by layer).
        """
        from torch.func import functional_call, grad, vmap

        names = self.names

        def single(q, xi):
            return functional_call(self.base, dict(zip(names, q)), (xi[None],))[0]

        def jac(ps, x):
            js = vmap(grad(single), in_dims=(None, 0))(tuple(ps), x)
            return torch.cat([j.reshape(len(x), -1) for j in js], 1)

        def gram(ps, xa, xb):
            return jac(ps, xa) @ jac(ps, xb).T

        same = x2 is None
        x2 = x1 if same else x2
        out = torch.empty(len(params[0]), len(x1), len(x2), dtype=params[0].dtype, device=params[0].device)
        with torch.no_grad():
            for i in range(0, len(x1), chunk):
                for j in range(0, len(x2), chunk):
                    if same and j < i:
                        out[:, i:i + chunk, j:j + chunk] = out[:, j:j + chunk, i:i + chunk].transpose(1, 2)
                        continue
                    out[:, i:i + chunk, j:j + chunk] = vmap(gram, in_dims=(0, None, None))(
                        list(params), x1[i:i + chunk], x2[j:j + chunk])
        return out

    def ntk_block(self, params: Sequence[torch.Tensor], x: torch.Tensor, rows: Sequence[torch.Tensor | None],
                  vectors: torch.Tensor, ctx: Any = None) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Each member m's (Theta_m(x[r], x[r]), Theta_m(x[r], x) v) for r = rows[m] and v = vectors[m] (n,), or None
        where rows[m] is None: what the robust step's loss coefficients need on a few margins. Generic: :meth:`ntk`
        member by member (``ctx`` unused); architectures may reuse the forward pass ``ctx``."""
        out = []
        for j, r in enumerate(rows):
            if r is None:
                out.append(None)
                continue
            th = self.ntk([p[j:j + 1] for p in params], x[r], x)[0]
            out.append((th[:, r], th @ vectors[j]))
        return out

    def slopes(self, ctx: Any) -> list[torch.Tensor] | None:
        """The activation slopes sigma'(a) of a forward pass, each with leading dim M, or None if this
        class cannot give them. :meth:`backward` can take another pass's slopes: the gradient with the
        activation pattern frozen, which integrators use to see past relu kinks."""
        return None

    def backward(self, params: Sequence[torch.Tensor], ctx: Any, dout: torch.Tensor,
                 slopes: list[torch.Tensor] | None = None, reuse: bool = False) -> list[torch.Tensor]:
        """Each member's sum_mu dout[m, mu] grad f~_m(x_mu), stacked like ``params``. Reusable: the
        same context takes several cotangents; ``reuse`` says more will come, for classes that can keep
        work for them (fc)."""
        if slopes is not None:
            raise NotImplementedError(f"{type(self).__name__} cannot freeze activation slopes")
        leaves, out = ctx
        return list(torch.autograd.grad(out, leaves, dout, retain_graph=True))

    def add_backward(self, params: Sequence[torch.Tensor], ctx: Any, g: Sequence[torch.Tensor], dout: torch.Tensor,
                     rows: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """``g`` plus each member m's sum over mu in rows[m] of dout[m, mu] grad f~_m(x_mu); m's slice of ``g``
        unchanged where rows[m] is None: the change of a gradient whose cotangent changed on a few points (the
        robust step's coefficients). Generic: a whole :meth:`backward` of ``dout`` restricted to the rows;
        architectures that keep per-sample gradients (fc) cost only the rows."""
        mask = torch.zeros_like(dout, dtype=torch.bool)
        for j, r in enumerate(rows):
            if r is not None:
                mask[j, r] = True
        extra = self.backward(params, ctx, torch.where(mask, dout, torch.zeros_like(dout)))
        some = mask.any(1)
        return [torch.where(some.reshape((-1,) + (1,) * (a.dim() - 1)), a + b, a) for a, b in zip(g, extra)]


#: On a CPU, a pass holds as many members as keep one activation tensor under this many numbers, and at
#: most CPU_WIDE_MEMBERS members whose own activation already holds CPU_WIDE numbers (one such member
#: keeps both cores busy). Measured on 2 cores, P = 1000, fc L = 2, member-steps/s by members per pass:
#: h = 30: 380 (1), 1141 (6), 1226 (16); h = 100: 168 (1), 233 (3), 310 (16); h = 300: 62 (1), 72 (2),
#: 58 (5), 42 (16).
CPU_ELEMENTS_PER_PASS = 1_600_000
CPU_WIDE = 250_000
CPU_WIDE_MEMBERS = 2


def members_per_pass(elements_per_member: int, dtype: torch.dtype, device: torch.device | str,
                     limit: int = 1024) -> int:
    """How many members to integrate in one batched pass: on a CPU, what the measurements above favour;
    on a GPU, a quarter of the free memory for about 16 activation-sized tensors per member."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        per = 16 * elements_per_member * torch.finfo(dtype).bits // 8
        return int(max(1, min(limit, free // 4 // max(per, 1))))
    size = CPU_ELEMENTS_PER_PASS // max(elements_per_member, 1)
    if elements_per_member >= CPU_WIDE:
        size = min(size, CPU_WIDE_MEMBERS)
    return int(max(1, min(limit, size)))


def ntk_by_loop(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Theta of one net the slow, obvious way (the reference's): one autograd gradient per point, then
    their dot products. For checks and benchmarks of :meth:`EnsembleNet.ntk`."""
    if not all(p.requires_grad for p in net.parameters()):
        net = copy.deepcopy(net).requires_grad_(True)  # a frozen net (theta_0)
    grads = []
    for xi in x:
        g = torch.autograd.grad(net(xi[None])[0], list(net.parameters()))
        grads.append(torch.cat([t.reshape(-1) for t in g]))
    g = torch.stack(grads)
    return g @ g.T


def ntk_of(net: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
    """Theta of one net between the rows of x1 and x2 (x1 when None), (n1, n2), through its architecture's
    fastest batched kernel (an ensemble of one)."""
    ens = ensemble_of([net])
    with torch.no_grad():
        return ens.ntk(ens.stack([net]), x1, x2)[0]


def stacked(models, x: torch.Tensor):
    """What every batched engine starts from, for AlphaModels of one architecture and width: the
    batched net, the stacked parameters theta, the initial ones theta_0 (of each model's frozen ``net0``, so
    that a run can go on from where another left it), the members' alpha (M,) and f~0 on x (M, n)."""
    net = ensemble_of([m.net for m in models])
    params = net.stack([m.net for m in models])
    params0 = net.stack([m.net0 for m in models])
    alpha = torch.tensor([m.alpha for m in models], dtype=x.dtype, device=x.device)
    with torch.no_grad():
        f0, _ = net.forward(params0, x)
    return net, params, params0, alpha, f0


def in_passes(train_pass, models, data, monitors=None) -> list:
    """Train ``models`` by ``train_pass(models, monitors)`` in passes of :func:`members_per_pass` members;
    the results in order."""
    monitors = list(monitors) if monitors is not None else [None] * len(models)
    net = ensemble_of([models[0].net])
    size = members_per_pass(net.elements_per_member(len(data.x_train)), data.x_train.dtype, data.x_train.device)
    results = []
    for i in range(0, len(models), size):
        results += train_pass(models[i:i + size], monitors[i:i + size])
    return results


def ensemble_of(nets: Sequence[torch.nn.Module]) -> EnsembleNet:
    """The batched form of ``nets`` (one architecture and width): their :attr:`dlphase.Net.ensemble_class`
    (the generic vmap one for modules that are not a Net)."""
    if len({type(n) for n in nets}) != 1:
        raise ValueError("an ensemble needs nets of one architecture")
    from .net import fast_paths

    return type(fast_paths(nets[0])).ensemble_class(nets)
