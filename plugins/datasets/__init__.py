"""Datasets: MNIST and its kin, CIFAR10, scikit-learn's digits and the synthetic sets (stripe, random labels,
teacher), with the image pipeline they share (IDX files, splits, centring, normalisation, PCA)."""
