"""Text generation from a trained model, with the prompt checked at the boundary.

    text = sample_text(model, tokenizer, "ROMEO:", 200, temperature=0.8, top_k=40, seed=0)
"""

from __future__ import annotations

import numpy as np

from crystalline.data.tokenizers import UNK
from crystalline.errors import ConfigError


def sample_text(model, tokenizer, prompt: str, tokens: int, temperature: float = 1.0,
                top_k: int | None = None, seed: int = 0) -> str:
    """The prompt followed by `tokens` sampled tokens, decoded."""
    if not isinstance(prompt, str) or prompt == "":
        raise ConfigError("the prompt is empty; give at least one character of text to continue")
    if tokens <= 0:
        raise ConfigError(f"tokens={tokens} is invalid: ask for a positive number of tokens")
    if temperature <= 0:
        raise ConfigError(f"temperature={temperature} is invalid: use a positive temperature (e.g. 0.8)")
    if top_k is not None and not 1 <= top_k <= model.config.vocab_size:
        raise ConfigError(f"top_k={top_k} is invalid: use 1 to {model.config.vocab_size} or leave it unset")
    ids = tokenizer.encode(prompt)
    if len(ids) == 0:
        raise ConfigError(f"the prompt {prompt!r} encodes to no tokens; give some text")
    if tokenizer.name == "word" and np.all(ids == UNK):
        raise ConfigError(f"every word of the prompt {prompt!r} is outside the word tokenizer's "
                          "vocabulary; use words from the training corpus")
    out = model.generate(np.asarray(ids, dtype=np.int32)[None, :], tokens, temperature=temperature,
                         top_k=top_k, seed=seed)
    return tokenizer.decode(out[0])
