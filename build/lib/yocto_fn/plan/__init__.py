"""What to train on this device for this budget: the measured step cost (`probe`), the
fitted loss law (`law`) and the plan built from both (`recommend`)."""
