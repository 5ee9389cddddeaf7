"""Shared Triton code for the CUDA paths of ``sinklab.ops``: one flash-attention template (``kernels.py``) and
its host side (``flash.py``). Imported only by the ``triton.py`` modules, never by ``import sinklab``."""
