"""Finding features by what they mean: lexical ranking (lexical.py), label embeddings under a
small sentence-embedding model (embeddings.py) cached on disk (cache.py), the features that fire
on the query's words (activation.py), and the blend of them all that the API serves (blend.py).

Nothing is imported here, so that server/model/labels.py can use the parts without a cycle.
"""
