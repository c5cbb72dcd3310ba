"""`python cli.py ...` is the same as `spectra ...`."""

from spectra.cli import main

if __name__ == "__main__":
    main()
