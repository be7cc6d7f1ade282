"""Models: backbones, the E2ABL module and the baselines."""
