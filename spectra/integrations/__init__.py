"""spectra alongside other tools: the latest metrics in TensorBoard and W&B while a ``Trainer``
trains (:mod:`.reporter`, :mod:`.tensorboard`, :mod:`.wandb`), and the callback of training
frameworks other than transformers' ``Trainer``, each an optional extra
(:mod:`.lightning`: ``pip install 'spectra-drift[lightning]'``)."""

PREFIX = "spectra"  # the metrics' tags: spectra/<metric>/<module>
