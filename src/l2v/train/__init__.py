"""Training objectives of the LLM2Vec recipe: MNTP (step 2), unsupervised SimCSE (step 3) and supervised
contrastive learning with gradient caching. The run loop, configs and CLI come in a later milestone."""
