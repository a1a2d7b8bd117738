"""AugPaint core library: data, models, training, inpainting, filtering, metrics, tracking.

It has no Kubeflow dependency: the KFP components in ``components/`` are thin
wrappers around :mod:`augpaint_core.stages`.
"""
__version__ = "0.1.0"
