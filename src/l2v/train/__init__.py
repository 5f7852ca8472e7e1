"""Steps 2 and 3 of LLM2Vec, and supervised contrastive training: each stage an objective (``mntp.py``,
``simcse.py``, ``supervised.py``, registered in ``objectives.py``) run by one resumable, distributed loop on
accelerate (``runner.py``) from a YAML config (``config.py``, ``data.py``); ``convert.py`` chains the recipe."""
