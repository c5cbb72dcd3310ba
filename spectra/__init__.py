"""spectra: spectral drift analysis of fine-tuning (ΔΣ, ΔD, κ, orthonormality) in float64."""

__version__ = "0.1.0"


_LAZY = {
    "Tracker": "spectra.callback",
    "SpectraCallback": "spectra.callback",
    "drift": "spectra.metrics",
    "factor_metrics": "spectra.metrics",
}
__all__ = ["SpectraCallback", "Tracker", "__version__", "drift", "factor_metrics"]


def __getattr__(name: str):
    """Import the public names on first use, so ``import spectra`` stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spectra' has no attribute {name!r}")
