"""Models to and from the Hugging Face / PyTorch world: GPT-2 folders and nanoGPT state dicts.

    to_hf(model, tokenizer, "out/")        # config.json, model.safetensors, tokenizer files:
                                           # transformers.GPT2LMHeadModel.from_pretrained("out/")
    to_nanogpt(model, "out/")              # model.safetensors with nanoGPT's names (bias=True)
    model, tokenizer = from_hf("gpt2-folder/")    # a local GPT-2-architecture folder; no download

Our flat layout (crystalline.model.layout) stacks each per-layer tensor over layers and stores
weights as (out, in), nn.Linear's order. GPT-2 and nanoGPT use the same parameter names
(`transformer.h.{l}.attn.c_attn.weight`, ...); GPT-2's Conv1D stores weights as (in, out), so
the four block matrices are transposed for Hugging Face and not for nanoGPT. The LM head is
tied to the token embedding in all three. A folder whose architecture differs (no biases,
another activation or LayerNorm epsilon, an untied head, rotary positions, another MLP width)
is refused with an error naming each difference.

Byte tokenizer on the Hugging Face side: a BPE model with no merges whose vocabulary maps GPT-2's
byte-to-character table onto ids 0..255, with byte-level pre-tokenizer and decoder, so every
text encodes to exactly its UTF-8 bytes as ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from crystalline.errors import CheckpointError

# (our name, GPT-2 / nanoGPT name with {l} for the layer, a block matrix stored (out, in))
NAMES = [
    ("wte", "transformer.wte.weight", False), ("wpe", "transformer.wpe.weight", False),
    ("ln1w", "transformer.h.{l}.ln_1.weight", False), ("ln1b", "transformer.h.{l}.ln_1.bias", False),
    ("qkvw", "transformer.h.{l}.attn.c_attn.weight", True),
    ("qkvb", "transformer.h.{l}.attn.c_attn.bias", False),
    ("attprojw", "transformer.h.{l}.attn.c_proj.weight", True),
    ("attprojb", "transformer.h.{l}.attn.c_proj.bias", False),
    ("ln2w", "transformer.h.{l}.ln_2.weight", False), ("ln2b", "transformer.h.{l}.ln_2.bias", False),
    ("fcw", "transformer.h.{l}.mlp.c_fc.weight", True), ("fcb", "transformer.h.{l}.mlp.c_fc.bias", False),
    ("fcprojw", "transformer.h.{l}.mlp.c_proj.weight", True),
    ("fcprojb", "transformer.h.{l}.mlp.c_proj.bias", False),
    ("lnfw", "transformer.ln_f.weight", False), ("lnfb", "transformer.ln_f.bias", False),
]
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")   # GELU's tanh form, as our kernel computes it
HF_FILES = ("config.json", "model.safetensors")


def state_dict(model, conv1d: bool) -> dict[str, np.ndarray]:
    """GPT-2 / nanoGPT name -> float32 array; conv1d=True stores block matrices (in, out)."""
    p, out = model.param_views(), {}
    for ours, theirs, matrix in NAMES:
        if "{l}" not in theirs:
            out[theirs] = np.ascontiguousarray(p[ours])
            continue
        for l in range(model.config.n_layer):
            w = p[ours][l]
            out[theirs.format(l=l)] = np.ascontiguousarray(w.T if matrix and conv1d else w)
    return out


def load_state_dict(model, tensors: dict[str, np.ndarray], conv1d: bool, where: str) -> None:
    """Copy a GPT-2 / nanoGPT state dict into model.params (shapes and finiteness checked)."""
    p = model.param_views()
    for ours, theirs, matrix in NAMES:
        layers = [None] if "{l}" not in theirs else range(model.config.n_layer)
        for l in layers:
            name = theirs if l is None else theirs.format(l=l)
            if name not in tensors:
                raise CheckpointError(f"{where}: tensor {name} is missing; expected a GPT-2 "
                                      "state dict with biases")
            target = p[ours] if l is None else p[ours][l]
            t = np.asarray(tensors[name], dtype=np.float32)
            want = target.shape[::-1] if matrix and conv1d else target.shape
            if t.shape != want:
                raise CheckpointError(f"{where}: tensor {name} has shape {t.shape}; its config "
                                      f"implies {want}")
            if not np.isfinite(t).all():
                raise CheckpointError(f"{where}: tensor {name} holds non-finite values; "
                                      "crystalline starts only from finite weights")
            target[...] = t.T if matrix and conv1d else t


def _write_json(path: Path, doc: dict) -> None:
    from crystalline.io import atomic_write_bytes
    atomic_write_bytes(path, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save
    from crystalline.io import atomic_write_bytes
    atomic_write_bytes(path, save(tensors, metadata={"format": "pt"}))


def hf_config(cfg) -> dict:
    """config.json for transformers' GPT2LMHeadModel matching our architecture exactly."""
    from crystalline.model.kernels.layernorm import EPS
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": EPS,
        "tie_word_embeddings": True, "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
        "bos_token_id": None, "eos_token_id": None, "dtype": "float32",
    }


def byte_level_alphabet() -> list[str]:
    """GPT-2's printable character for each byte 0..255 (bytes_to_unicode)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def hf_tokenizer_json(tokenizer) -> str | None:
    """The Hugging Face tokenizer.json giving the same ids as `tokenizer`, or None (word)."""
    if tokenizer.name == "bpe":
        return tokenizer.hf.to_str()
    if tokenizer.name != "byte":
        return None
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    vocab = {ch: b for b, ch in enumerate(byte_level_alphabet())}
    hf = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    return hf.to_str()


def to_hf(model, tokenizer, out_dir) -> Path:
    """Write a folder transformers' GPT2LMHeadModel.from_pretrained loads (and, for the byte and
    BPE tokenizers, AutoTokenizer.from_pretrained with the same ids); returns the folder.
    Each file is written atomically."""
    out = Path(out_dir)
    _check_out_dir(out)
    _write_safetensors(out / "model.safetensors", state_dict(model, conv1d=True))
    _write_json(out / "config.json", hf_config(model.config))
    doc = hf_tokenizer_json(tokenizer) if tokenizer is not None else None
    if doc is not None:
        from crystalline.io import atomic_write_bytes
        atomic_write_bytes(out / "tokenizer.json", doc.encode("utf-8"))
        _write_json(out / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model.config.block_size,
            "crystalline_tokenizer": tokenizer.name})
    return out


def to_nanogpt(model, out_dir) -> Path:
    """Write model.safetensors with nanoGPT's parameter names (lm_head.weight tied to wte, as its
    state_dict has it) and config.json with its GPTConfig fields; returns the folder."""
    out = Path(out_dir)
    _check_out_dir(out)
    tensors = state_dict(model, conv1d=False)
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"].copy()
    cfg = model.config
    _write_safetensors(out / "model.safetensors", tensors)
    _write_json(out / "config.json", {"block_size": cfg.block_size, "vocab_size": cfg.vocab_size,
                                      "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                                      "n_embd": cfg.n_embd, "dropout": cfg.dropout, "bias": True})
    return out


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {out} is a file; pass a folder to write the model into")
    out.mkdir(parents=True, exist_ok=True)


# ---- import ------------------------------------------------------------------------------------

def architecture_differences(config: dict) -> list[str]:
    """What in a Hugging Face config.json differs from crystalline's GPT-2 (empty: importable)."""
    from crystalline.model.kernels.layernorm import EPS
    diffs = []
    model_type = config.get("model_type")
    if model_type != "gpt2":
        diffs.append(f"model_type is {model_type!r}, not 'gpt2'")
    act = config.get("activation_function", config.get("hidden_act", "gelu_new"))
    if act not in ACTIVATIONS:
        diffs.append(f"activation {act!r} (crystalline's GELU is the tanh form, 'gelu_new')")
    if not config.get("tie_word_embeddings", True):
        diffs.append("an untied LM head (tie_word_embeddings is false)")
    rotary = sorted(k for k in ("rotary_dim", "rope_theta", "rope_scaling", "rope_parameters",
                                "rotary_pct", "rotary_emb_base") if config.get(k) is not None)
    if rotary or config.get("position_embedding_type", "absolute") != "absolute":
        diffs.append(f"rotary / relative positions ({', '.join(rotary) or config['position_embedding_type']}); "
                     "crystalline learns absolute position embeddings")
    for key in ("bias", "attention_bias", "mlp_bias", "use_bias"):
        if config.get(key) is False:
            diffs.append(f"no biases ({key} is false)")
    n_embd = config.get("n_embd", config.get("hidden_size"))
    n_inner = config.get("n_inner", config.get("intermediate_size"))
    if n_inner is not None and n_embd is not None and n_inner != 4 * n_embd:
        diffs.append(f"an MLP of width {n_inner} (crystalline's is 4 x n_embd = {4 * n_embd})")
    eps = config.get("layer_norm_epsilon", config.get("layer_norm_eps", EPS))
    if eps != EPS:
        diffs.append(f"LayerNorm epsilon {eps} (crystalline's is {EPS})")
    if config.get("scale_attn_weights", True) is False:
        diffs.append("unscaled attention (scale_attn_weights is false)")
    if config.get("scale_attn_by_inverse_layer_idx"):
        diffs.append("attention scaled by the inverse layer index")
    if config.get("add_cross_attention"):
        diffs.append("cross-attention layers")
    return diffs


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open
    tensors = {}
    try:
        with safe_open(str(path), framework="numpy") as f:
            for name in f.keys():
                key = name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"
                tensors[key] = f.get_tensor(name)
    except Exception as e:   # noqa: BLE001 - any parse failure (incl. bfloat16, which numpy lacks)
        raise CheckpointError(f"{path} cannot be read as float32/float16 safetensors ({e}); save the "
                              "model with save_pretrained(..., safe_serialization=True) in float32") from None
    return tensors


def from_hf(model_dir):
    """(GPT, tokenizer or None) from a local GPT-2-architecture folder: config.json,
    model.safetensors and optionally tokenizer.json (or GPT-2's vocab.json + merges.txt).
    Nothing is downloaded; any other architecture is refused naming what differs."""
    from crystalline.config import ModelConfig
    from crystalline.errors import ConfigError
    from crystalline.model.gpt import GPT
    folder = Path(model_dir)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; pass a local folder holding config.json and "
                              "model.safetensors (e.g. written by save_pretrained); nothing is downloaded")
    missing = [name for name in HF_FILES if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{folder} has no {' or '.join(missing)}; save the model with "
                              "save_pretrained(folder, safe_serialization=True)")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{folder / 'config.json'} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{folder / 'config.json'} is not a JSON object")
    diffs = architecture_differences(config)
    tensors = _read_tensors(folder / "model.safetensors")
    if "transformer.h.0.attn.c_attn.bias" not in tensors and "transformer.h.0.attn.c_attn.weight" in tensors:
        diffs.append("no biases (transformer.h.0.attn.c_attn.bias is absent)")
    if "lm_head.weight" in tensors and "transformer.wte.weight" in tensors and \
            not np.array_equal(tensors["lm_head.weight"], tensors["transformer.wte.weight"]):
        diffs.append("an untied LM head (lm_head.weight differs from transformer.wte.weight)")
    if diffs:
        raise CheckpointError(f"{folder} is not a GPT-2 architecture crystalline can train: "
                              + "; ".join(dict.fromkeys(diffs)))
    try:
        cfg = ModelConfig(vocab_size=config["vocab_size"], block_size=config["n_positions"],
                          n_layer=config["n_layer"], n_head=config["n_head"], n_embd=config["n_embd"],
                          dropout=_hf_dropout(config, folder))
    except KeyError as e:
        raise CheckpointError(f"{folder / 'config.json'}: missing key {e}") from None
    except ConfigError as e:
        raise CheckpointError(f"{folder / 'config.json'}: {e}") from None
    model = GPT(cfg, seed=0)
    load_state_dict(model, tensors, conv1d=True, where=str(folder / "model.safetensors"))
    return model, _hf_tokenizer(folder, cfg.vocab_size)


def _hf_dropout(config: dict, folder: Path) -> float:
    """ModelConfig.dropout from GPT-2's three drop probabilities (transformers' default 0.1 where
    absent); where they differ, the residual one, with a warning naming the others."""
    import warnings
    drops = {k: config.get(k, 0.1) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
    if len(set(drops.values())) > 1:
        warnings.warn(f"{folder / 'config.json'}: crystalline has one dropout probability; using "
                      f"resid_pdrop = {drops['resid_pdrop']} for all of {drops}", stacklevel=3)
    return drops["resid_pdrop"]


def _hf_tokenizer(folder: Path, vocab_size: int):
    """The folder's tokenizer as a crystalline Tokenizer, or None when it has none."""
    from crystalline.data.tokenizers import BPETokenizer, ByteTokenizer
    kind = None
    if (folder / "tokenizer_config.json").is_file():
        try:
            kind = json.loads((folder / "tokenizer_config.json").read_text("utf-8")).get("crystalline_tokenizer")
        except (ValueError, OSError, AttributeError):
            kind = None
    if kind == "byte":
        tok = ByteTokenizer()
    elif (folder / "tokenizer.json").is_file():
        tok = BPETokenizer.from_file(folder / "tokenizer.json")
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        hf = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        tok = BPETokenizer(hf)
    else:
        return None
    if tok.vocab_size > vocab_size:
        raise CheckpointError(f"{folder}: the tokenizer has {tok.vocab_size} tokens but the model only "
                              f"{vocab_size}; use the tokenizer saved with this model")
    return tok


def trainer_from_hf(trainer_cls, model_dir, train_cfg, data, tokenizer=None, vocab_size=None,
                    workers=None, sync="lock_free", run_dir=None, dropout=None):
    """A Trainer (or DistributedTrainer) on `data` whose model starts from a local GPT-2 folder
    (`from_hf`), with the folder's tokenizer; `tokenizer` (a spec as for load_corpus) only when
    the folder has none, and its vocabulary must then equal the model's. dropout: None keeps the
    folder's drop probability."""
    from crystalline.data.corpus import load_corpus
    from crystalline.errors import ConfigError
    model, folder_tokenizer = from_hf(model_dir)
    if folder_tokenizer is not None and (tokenizer is not None or vocab_size is not None):
        raise ConfigError(f"{model_dir} has its own tokenizer, which the model was trained with; "
                          "leave out --tokenizer / --vocab-size with --init-from")
    corpus = load_corpus(data, folder_tokenizer or tokenizer, vocab_size=vocab_size)
    if corpus.tokenizer.vocab_size != model.config.vocab_size:
        raise ConfigError(f"the tokenizer has {corpus.tokenizer.vocab_size} tokens but the model in "
                          f"{model_dir} has a vocabulary of {model.config.vocab_size}; use the "
                          "tokenizer the model was trained with (its tokenizer.json)")
    model_cfg = model.config if dropout is None else model.config.replace(dropout=dropout)
    trainer = trainer_cls(model_cfg, train_cfg, corpus, workers=workers, sync=sync, run_dir=run_dir)
    trainer.model.params[:] = model.params
    trainer.model.weights_changed()
    return trainer
