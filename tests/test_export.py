"""Export to and import from transformers' GPT-2 and nanoGPT: logits, token ids, greedy text,
refusals. Reference models are transformers' own and a nanoGPT module written here."""

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
nn, F = torch.nn, torch.nn.functional

from crystalline.cli import main  # noqa: E402
from crystalline.config import ModelConfig, preset  # noqa: E402
from crystalline.data.tokenizers import BPETokenizer, ByteTokenizer  # noqa: E402
from crystalline.engine.trainer import Trainer  # noqa: E402
from crystalline.errors import CheckpointError, ConfigError  # noqa: E402
from crystalline.export import from_hf, to_hf, to_nanogpt  # noqa: E402
from crystalline.model.gpt import GPT  # noqa: E402

SAMPLE = "ROMEO: Wherefore art thou? \u00e9t\u00e9 \u2014 \U0001F642\n\tend"


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def hf_logits(folder, x):
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return hf(torch.tensor(x, dtype=torch.long)).logits.numpy()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny preset trained a few steps on Tiny Shakespeare (byte tokens)."""
    from crystalline.data.corpus import bundled_corpus
    model_cfg, train_cfg = preset("tiny")
    cache = tmp_path_factory.mktemp("cache")
    with Trainer(model_cfg, train_cfg, str(bundled_corpus()), workers=1, cache_dir=cache) as tr:
        tr.run(8, progress=False)
        return tr.model, tr.corpus.tokenizer


def test_hf_export_loads_in_transformers_with_equal_logits_and_token_ids(trained, tmp_path):
    model, tokenizer = trained
    to_hf(model, tokenizer, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["activation_function"] == "gelu_new" and config["layer_norm_epsilon"] == 1e-5
    assert config["tie_word_embeddings"] is True and config["n_positions"] == model.config.block_size
    x = np.random.default_rng(0).integers(0, model.config.vocab_size, (3, model.config.block_size))
    model.forward(x.astype(np.int32))
    assert rel_err(model.logits, hf_logits(tmp_path, x)) < 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf_tok(SAMPLE)["input_ids"] == tokenizer.encode(SAMPLE).tolist()
    assert hf_tok.decode(tokenizer.encode(SAMPLE).tolist()) == SAMPLE


def test_byte_tokenizer_on_the_hf_side_gives_every_byte_its_own_value(tmp_path):
    to_hf(GPT(ModelConfig(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=16)),
          ByteTokenizer(), tmp_path)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "".join(chr(c) for c in range(1, 128)) + "\u00ff\u0100\u4e2d\U00010000"
    assert hf_tok(text)["input_ids"] == list(text.encode("utf-8"))
    assert len(hf_tok) == 256
    ids = list(range(256)) + [0xE4, 0xB8, 0xAD, 0xC3]      # all bytes, a character, a cut one
    assert hf_tok.decode(ids) == ByteTokenizer().decode(ids)


def test_bpe_tokenizer_exports_with_the_same_ids(tmp_path):
    text = ("the quick brown fox jumps over the lazy dog. " * 40) + "caf\u00e9 na\u00efve \u4e2d\u6587 " * 10
    tok = BPETokenizer.train(text, vocab_size=320)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    to_hf(model, tok, tmp_path)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for s in (SAMPLE, "the lazy fox, caf\u00e9 \u4e2d"):
        assert hf_tok(s)["input_ids"] == tok.encode(s).tolist()
    model2, tok2 = from_hf(tmp_path)
    assert tok2 == tok and np.array_equal(model2.params, model.params)


def test_import_of_a_random_gpt2_gives_the_same_logits(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=24, n_embd=48, n_layer=2, n_head=3,
                                  bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():   # non-trivial LayerNorm and biases
        for name, p in hf.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path)
    model, tokenizer = from_hf(tmp_path)
    assert tokenizer is None
    # transformers' default drop probabilities (0.1) come with it
    assert model.config == ModelConfig(vocab_size=97, block_size=24, n_layer=2, n_head=3, n_embd=48,
                                       dropout=0.1)
    x = np.random.default_rng(1).integers(0, 97, (2, 24))
    model.forward(x.astype(np.int32))
    with torch.no_grad():
        theirs = hf(torch.tensor(x)).logits.numpy()
    assert rel_err(model.logits, theirs) < 1e-4
    # the original GPT-2 files: no "transformer." prefix, attention-mask buffers, float16
    from safetensors.numpy import load_file, save_file
    tensors = load_file(tmp_path / "model.safetensors")
    old_style = {k.removeprefix("transformer."): v.astype(np.float16) for k, v in tensors.items()}
    old_style.update({f"h.{l}.attn.bias": np.tril(np.ones((1, 1, 24, 24), np.float16)) for l in range(2)})
    save_file(old_style, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model16, _ = from_hf(tmp_path)
    np.testing.assert_array_equal(model16.params, model.params.astype(np.float16).astype(np.float32))


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    from safetensors.numpy import load_file, save_file
    tensors = load_file(tmp_path / "model.safetensors")
    name = next(k for k in tensors if k.endswith("h.0.mlp.c_fc.weight"))
    tensors[name][3, 5] = np.inf
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=f"tensor {name} holds non-finite values"):
        from_hf(tmp_path)


@pytest.mark.parametrize("change, named", [
    ({"activation_function": "relu"}, "activation 'relu'"),
    ({"n_inner": 96}, "MLP of width 96"),
    ({"tie_word_embeddings": False}, "untied LM head"),
    ({"layer_norm_epsilon": 1e-6}, "LayerNorm epsilon"),
])
def test_gpt2_variants_are_refused_naming_the_difference(tmp_path, change, named):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2, **change)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=named):
        from_hf(tmp_path)


def test_another_architecture_is_refused_naming_what_differs(tmp_path):
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, vocab_size=64)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError) as e:
        from_hf(tmp_path)
    message = str(e.value)
    for named in ("model_type is 'llama'", "activation 'silu'", "rotary", "no biases", "untied"):
        assert named in message, message
    assert main(["train", "--init-from", str(tmp_path), "--steps", "1"]) == 2


def test_import_needs_a_folder_with_the_files(tmp_path):
    with pytest.raises(CheckpointError, match="not a folder"):
        from_hf(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="config.json or model.safetensors"):
        from_hf(tmp_path)


class NanoBlock(nn.Module):
    """nanoGPT's Block with bias=True, written here as the independent reference."""

    def __init__(self, C, NH, T):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.attn = nn.Module()
        self.attn.c_attn, self.attn.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.mlp = nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)
        self.NH = NH

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.attn.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.NH, C // self.NH).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.attn.c_proj(y)
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh"))


class NanoGPT(nn.Module):
    def __init__(self, V, T, L, NH, C):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(V, C), wpe=nn.Embedding(T, C),
            h=nn.ModuleList([NanoBlock(C, NH, T) for _ in range(L)]), ln_f=nn.LayerNorm(C)))
        self.lm_head = nn.Linear(C, V, bias=False)
        self.transformer.wte.weight = self.lm_head.weight        # tied, as nanoGPT does

    def forward(self, idx):
        t = self.transformer
        x = t.wte(idx) + t.wpe(torch.arange(idx.shape[1]))
        for block in t.h:
            x = block(x)
        return self.lm_head(t.ln_f(x))


def test_nanogpt_names_load_into_a_nanogpt_module_with_equal_logits(trained, tmp_path):
    from safetensors.torch import load_file
    model, _ = trained
    cfg = model.config
    to_nanogpt(model, tmp_path)
    nano = NanoGPT(cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd)
    nano.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    assert json.loads((tmp_path / "config.json").read_text())["bias"] is True
    x = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, cfg.block_size))
    model.forward(x.astype(np.int32))
    with torch.no_grad():
        assert rel_err(model.logits, nano(torch.tensor(x)).numpy()) < 1e-4


def test_a_model_trained_here_generates_the_same_greedy_text_in_transformers(tmp_path, capsys):
    """The issue's done-when: crystalline sample --top-k 1 == transformers' greedy generate."""
    run, out = tmp_path / "run", tmp_path / "hf"
    assert main(["train", "--steps", "150", "--workers", "1", "--run-dir", str(run), "--no-progress",
                 "--sample", "0"]) == 0
    assert main(["export", str(run / "checkpoint.safetensors"), "--format", "hf", "--out", str(out)]) == 0
    capsys.readouterr()
    prompt, tokens = "the king", 24
    assert main(["sample", "--ckpt", str(run / "checkpoint.safetensors"), "--prompt", prompt,
                 "--tokens", str(tokens), "--top-k", "1"]) == 0
    ours = capsys.readouterr().out[:-1]          # print's newline
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ids = torch.tensor([hf_tok(prompt)["input_ids"]])
    with torch.no_grad():
        generated = hf.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=0)
    theirs = hf_tok.decode(generated[0].tolist())
    assert len(generated[0]) == len(prompt) + tokens
    assert ours == theirs
    assert len(set(ours[len(prompt):])) > 1, ours     # a real continuation, not one repeated byte


def test_export_command_writes_both_formats_and_names_bad_paths(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--steps", "2", "--workers", "1", "--run-dir", str(run), "--no-progress",
                 "--sample", "0"]) == 0
    ckpt = str(run / "checkpoint.safetensors")
    assert main(["export", ckpt, "--format", "torch", "--out", str(tmp_path / "nano")]) == 0
    from safetensors.numpy import load_file
    names = set(load_file(tmp_path / "nano" / "model.safetensors"))
    assert "lm_head.weight" in names and "transformer.h.1.mlp.c_proj.bias" in names
    assert main(["export", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "x")]) == 2
    (tmp_path / "file").write_text("")
    assert main(["export", ckpt, "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_a_gpt2_folder_fine_tunes_here(tmp_path):
    """--init-from a GPT-2-shape folder: training starts from its parameters and lowers the loss."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=256, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    to_hf(from_hf(tmp_path / "gpt2")[0], ByteTokenizer(), tmp_path / "gpt2")   # add a tokenizer
    imported, _ = from_hf(tmp_path / "gpt2")
    run = tmp_path / "run"
    assert main(["train", "--init-from", str(tmp_path / "gpt2"), "--steps", "30", "--workers", "1",
                 "--run-dir", str(run), "--no-progress", "--sample", "0"]) == 0
    losses = [json.loads(l)["loss"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    # the first loss is the imported model's (near ln 256 for a random GPT-2), then it falls
    assert abs(losses[0] - math.log(256)) < 0.1
    assert np.mean(losses[-5:]) < losses[0] - 0.3
    with pytest.raises(ConfigError, match="own tokenizer"):
        main_raising(["train", "--init-from", str(tmp_path / "gpt2"), "--tokenizer", "byte"])
    assert imported.config.block_size == 32


def main_raising(argv):
    """Run a CLI command's function directly, so its error is raised rather than printed."""
    from crystalline.cli import build_parser
    args = build_parser().parse_args(argv)
    return args.func(args)


def test_dropout_goes_into_the_exported_configs_and_comes_back(tmp_path):
    model = GPT(ModelConfig(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.2))
    to_hf(model, None, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["resid_pdrop"] == config["embd_pdrop"] == config["attn_pdrop"] == 0.2
    hf_config = transformers.GPT2Config.from_pretrained(tmp_path / "hf")
    assert hf_config.resid_pdrop == hf_config.embd_pdrop == hf_config.attn_pdrop == 0.2
    assert from_hf(tmp_path / "hf")[0].config == model.config
    to_nanogpt(model, tmp_path / "nano")
    assert json.loads((tmp_path / "nano" / "config.json").read_text())["dropout"] == 0.2
    config["attn_pdrop"] = 0.0          # three probabilities crystalline cannot tell apart
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="one dropout probability"):
        assert from_hf(tmp_path / "hf")[0].config.dropout == 0.2
