"""The gradient-flow integrator: the Euler rules' loop, the loss-coefficient rules, the step-size controllers, the
kernel cache and the chebyshev (RKC2) steps."""
