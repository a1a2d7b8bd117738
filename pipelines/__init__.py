"""KFP pipeline definitions and their compile / local-run entry points (the only kfp users besides components)."""
