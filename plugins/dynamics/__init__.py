"""Dynamics: gradient flow (its integrator in ``integrator/``), gd and sgd, and the kernel methods, with what the
batched engines share: member bookkeeping, loss coefficients and the stop rules."""
