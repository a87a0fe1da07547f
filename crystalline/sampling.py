"""Text generation from a trained model: the prompt is checked here, every sampling argument by
`crystalline.model.sample.check_sampling` (the one rule for the CLI, notebooks and `GPT.generate`).

    text = sample_text(model, tokenizer, "ROMEO:", 200, temperature=0.8, top_k=40, seed=0)
"""

from __future__ import annotations

import numpy as np

from crystalline.data.tokenizers import UNK
from crystalline.errors import ConfigError
from crystalline.model.sample import check_sampling, generate


def sample_text(model, tokenizer, prompt: str, tokens: int, temperature: float = 1.0,
                top_k: int | None = None, seed: int = 0, cache: bool = True) -> str:
    """The prompt followed by `tokens` sampled tokens, decoded."""
    check_sampling(model.config.vocab_size, tokens, temperature, top_k, seed)
    if not isinstance(prompt, str) or prompt == "":
        raise ConfigError("the prompt is empty; give at least one character of text to continue")
    ids = tokenizer.encode(prompt)
    if len(ids) == 0:
        raise ConfigError(f"the prompt {prompt!r} encodes to no tokens; give some text")
    if tokenizer.name == "word" and np.all(ids == UNK):
        raise ConfigError(f"every word of the prompt {prompt!r} is outside the word tokenizer's "
                          "vocabulary; use words from the training corpus")
    out = generate(model, np.asarray(ids, dtype=np.int32)[None, :], tokens, temperature=temperature,
                   top_k=top_k, seed=seed, cache=cache)
    return tokenizer.decode(out[0])
