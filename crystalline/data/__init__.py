"""The data pipeline: tokenizers, corpora (text files, folders, SQuAD), a token cache, batches.

    from crystalline.data import load_corpus, bundled_corpus, Batches
    corpus = load_corpus(bundled_corpus())                 # byte tokens, cached on disk
    train, val = corpus.split(0.1)
    batches = Batches(train, block_size=128, batch_size=16, seed=0)
    x, y = batches.sequence(step=0, i=0)                    # (T,), (T,) int32

Names are imported on first use, so importing the package is cheap.
"""

_LAZY = {
    "ByteTokenizer": "crystalline.data.tokenizers",
    "WordTokenizer": "crystalline.data.tokenizers",
    "Tokenizer": "crystalline.data.tokenizers",
    "load_tokenizer": "crystalline.data.tokenizers",
    "Corpus": "crystalline.data.corpus",
    "load_corpus": "crystalline.data.corpus",
    "corpus_info": "crystalline.data.corpus",
    "bundled_corpus": "crystalline.data.corpus",
    "render_squad": "crystalline.data.squad",
    "render_squad_file": "crystalline.data.squad",
    "download_squad": "crystalline.data.squad",
    "Batches": "crystalline.data.batching",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'crystalline.data' has no attribute {name!r}")
