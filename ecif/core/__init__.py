"""The math of ECIF: contrastive terms, objective, parametrizations, solvers, fits, influence. Imports torch/numpy only: no pandas, no paths, no I/O."""
