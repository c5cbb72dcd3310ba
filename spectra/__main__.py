"""`python -m spectra ...` is the same as `spectra ...`."""

from spectra.cli import main

main()
