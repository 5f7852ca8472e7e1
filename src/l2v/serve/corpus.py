"""Moved to :mod:`l2v.corpus` (the corpus job is an offline batch job, not serving); kept for old imports."""

from ..corpus import *  # noqa: F401,F403
from ..corpus import CorpusJob, embed_corpus, iter_records, iter_shards, load_manifest, scan, search, texts_of  # noqa: F401
