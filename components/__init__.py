"""Thin KFP components, one per stage: parse parameters, call augpaint_core, write artifacts.

Every component runs in the project image (``$AUGPAINT_IMAGE``, default
``augpaint:<version>``), which carries augpaint_core and the same kfp version
that compiled the pipeline; hence ``install_kfp_package=False``.
"""
import os

from augpaint_core import __version__

IMAGE = os.environ.get("AUGPAINT_IMAGE", f"ghcr.io/augpaint/augpaint:{__version__}")
