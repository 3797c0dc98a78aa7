"""Architectures: the fc, cnn and mean_field nets, their activations, and their fast paths (the fc net's batched
ensemble, closed-form curvature and infinite-width kernels)."""
