"""Observables: test errors, the trajectory, the NTK and its kernel PCA, the first layer's scales and the Hessian
spectrum."""
