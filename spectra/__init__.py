"""spectra: spectral drift analysis of fine-tuning (ΔΣ, ΔD, κ, orthonormality) in float64."""

DISTRIBUTION = "spectra-drift"
_LAZY = {
    "Tracker": "spectra.callback",
    "SpectraCallback": "spectra.callback",
    "drift": "spectra.metrics",
    "factor_metrics": "spectra.metrics",
}
__all__ = ["SpectraCallback", "Tracker", "__version__", "drift", "factor_metrics"]


def __getattr__(name: str):
    """Import the public names on first use, so ``import spectra`` stays light; the version is
    the installed distribution's (its metadata, from pyproject.toml)."""
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(DISTRIBUTION)
        except PackageNotFoundError:  # a source tree run without being installed (python cli.py)
            return "0+unknown"
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spectra' has no attribute {name!r}")
