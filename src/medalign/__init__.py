"""medalign: joint representations of medical images and the text or omics that come with them.

Light at import time: heavy modules (torch, transformers, SimpleITK) load where used.
"""
from __future__ import annotations

__version__ = "0.1.0"


def load(run_dir, **kwargs):  # noqa: ANN001 - thin re-export, typed in medalign.api
    """Load a trained run: ``m = medalign.load(run_dir, checkpoint="best")``; see :func:`medalign.api.load`."""
    from medalign.api import load as _load

    return _load(run_dir, **kwargs)


__all__ = ["__version__", "load"]
