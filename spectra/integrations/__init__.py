"""Integrations with training frameworks other than transformers' ``Trainer``, each an optional
extra: :mod:`spectra.integrations.lightning` (``pip install 'spectra-drift[lightning]'``)."""
