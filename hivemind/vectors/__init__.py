"""Responses as vectors: `embed.py` (the in-process embedder and the vector cache keyed by
embedder id and text hash) and `index.py` (the FAISS index behind pair and near-duplicate
search). Remote embedders are providers (`hivemind.providers.embedders`)."""
