"""ECIF: Extended Influence Functions for contrastive (CLIP-style) losses.

Conventions are those of ``docs/math.md`` (sign: §5-§6): influence scores are
``IS(k) = grad L_val(theta_hat)^T Delta theta(k)``, an estimate of
``L_val(theta_hat_{-k}) - L_val(theta_hat)``; negative means removing pair k would lower the
validation loss, i.e. k is harmful. Every Delta theta carries the factor 1/n of the objective.
"""

__version__ = "0.1.0"
