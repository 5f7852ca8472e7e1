"""Putting an encoder to work: the embedding server (``app``, ``batcher``) and the corpus job (``corpus``)."""
