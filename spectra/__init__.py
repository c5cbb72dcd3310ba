"""spectra: spectral drift analysis of fine-tuning (ΔΣ, ΔD, κ, orthonormality) in float64."""

__version__ = "0.1.0"
