"""spectra alongside other tools: the latest metrics in TensorBoard and W&B while a ``Trainer``
trains (:mod:`.reporter`, :mod:`.tensorboard`, :mod:`.wandb`)."""

PREFIX = "spectra"  # the metrics' tags: spectra/<metric>/<module>
