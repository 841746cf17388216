"""Our CLIP text transformer against transformers' CLIPTextModel, and the CLIP tokenizer's
BOS/EOS/padding conventions (the Stable Diffusion v1 conditioning)."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
import transformers

from ldm.modules.encoders.clip import CLIPTextConfig, CLIPTextModel, load_clip_text_weights
from ldm.modules.encoders.modules import FrozenCLIPEmbedder
from transformers.convert_slow_tokenizer import bytes_to_unicode

from ldm.modules.encoders.tokenizers import (
    TokenizerUnavailableError,
    _byte_alphabet,
    load_clip_tokenizer,
    read_openai_bpe,
)

TINY = dict(width=32, layers=2, heads=4, mlp_width=64, max_length=16)
TINY_MERGES = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>")]


def hf_tiny(vocab_size: int, eos: int) -> transformers.CLIPTextModel:
    cfg = transformers.CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=16, bos_token_id=eos - 1, eos_token_id=eos, pad_token_id=eos,
    )
    return transformers.CLIPTextModel(cfg).eval()


def copy_hf_into_ours(hf: torch.nn.Module, ours: CLIPTextModel) -> None:
    # transformers 4.x keeps the `text_model.` level in CLIPTextModel's keys, 5.x drops it.
    state = {(k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in hf.state_dict().items()}
    state.setdefault("text_model.embeddings.position_ids", ours.state_dict()["text_model.embeddings.position_ids"])
    ours.load_state_dict(state, strict=True)


def write_openai_bpe(path: Path, merges) -> Path:
    text = "bpe_simple_vocab#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    return path


@pytest.fixture
def tiny_bpe(tmp_path):
    return write_openai_bpe(tmp_path / "bpe_tiny.txt.gz", TINY_MERGES)


# ----------------------------------------------------------------------------------------------
# Transformer numerics


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_text_transformer_matches_transformers(attn_implementation):
    hf = hf_tiny(vocab_size=100, eos=99)
    hf.config._attn_implementation = attn_implementation
    ours = CLIPTextModel(CLIPTextConfig(vocab_size=100, **TINY)).eval()
    hf_keys = {k.removeprefix("text_model.") for k in hf.state_dict()}
    own_keys = {k.removeprefix("text_model.") for k in ours.state_dict()}
    assert own_keys - hf_keys <= {"embeddings.position_ids"} and hf_keys <= own_keys
    copy_hf_into_ours(hf, ours)
    for length in (16, 7):
        tokens = torch.randint(0, 100, (3, length))
        with torch.no_grad():
            expected = hf(input_ids=tokens).last_hidden_state
            got = ours(tokens)
        assert got.shape == (3, length, 32)
        assert torch.allclose(got, expected, atol=1e-5)


def test_position_ids_is_a_persistent_buffer():
    sd = CLIPTextModel(CLIPTextConfig(vocab_size=10, **TINY)).state_dict()
    assert torch.equal(sd["text_model.embeddings.position_ids"], torch.arange(16)[None])


def test_frozen_clip_embedder_loads_local_weights(tmp_path, tiny_bpe):
    vocab, _ = read_openai_bpe(tiny_bpe)
    hf = hf_tiny(vocab_size=len(vocab), eos=len(vocab) - 1)
    hf.save_pretrained(tmp_path / "clip")
    emb = FrozenCLIPEmbedder(
        version=str(tmp_path / "clip"), max_length=16, pretrained=True, tokenizer_path=str(tiny_bpe)
    )
    assert all(not p.requires_grad for p in emb.parameters()) and not emb.transformer.training
    tokens = emb.tokenize(["a cat", "the dog"])
    with torch.no_grad():
        assert torch.allclose(emb.encode(["a cat", "the dog"]), hf(input_ids=tokens).last_hidden_state, atol=1e-5)


def test_weight_files_with_and_without_prefix(tmp_path):
    from safetensors.torch import save_file

    src = CLIPTextModel(CLIPTextConfig(vocab_size=50, **TINY))
    state = src.state_dict()
    # A full CLIPModel file: text tower under `text_model.`, plus entries to ignore.
    full = {k: v for k, v in state.items() if k != "text_model.embeddings.position_ids"}
    full["vision_model.post_layernorm.weight"] = torch.ones(3)
    full["logit_scale"] = torch.ones(())
    save_file(full, str(tmp_path / "full.safetensors"))
    bare = {k.removeprefix("text_model."): v for k, v in state.items()}
    torch.save(bare, tmp_path / "bare.bin")
    for name in ("full.safetensors", "bare.bin"):
        dst = CLIPTextModel(CLIPTextConfig(vocab_size=50, **TINY))
        load_clip_text_weights(dst, str(tmp_path / name))
        assert all(torch.equal(v, state[k]) for k, v in dst.state_dict().items())
    del bare["final_layer_norm.weight"]
    torch.save(bare, tmp_path / "broken.bin")
    with pytest.raises(RuntimeError, match="missing.*final_layer_norm.weight"):
        load_clip_text_weights(CLIPTextModel(CLIPTextConfig(vocab_size=50, **TINY)), str(tmp_path / "broken.bin"))


def test_frozen_clip_embedder_builds_offline_and_fails_clearly_at_first_use(monkeypatch):
    def offline(cls, *args, **kwargs):
        raise OSError("We couldn't connect to the hub")

    monkeypatch.setattr(transformers.CLIPTokenizer, "from_pretrained", classmethod(offline))
    with torch.device("meta"):
        emb = FrozenCLIPEmbedder(device="cuda")  # the SD v1 config: sizes of ViT-L/14, random weights
    assert emb.transformer.text_model.embeddings.token_embedding.weight.shape == (49408, 768)
    with pytest.raises(TokenizerUnavailableError, match="openai/clip-vit-large-patch14.*tokenizer_path"):
        emb.encode(["a photo of a cat"])
    with pytest.raises(RuntimeError, match="could not fetch CLIP text weights 'openai/clip-vit-large-patch14'.*local"):
        FrozenCLIPEmbedder(max_length=16, pretrained=True, text_config=TINY)


# ----------------------------------------------------------------------------------------------
# Tokenizer conventions


def test_tiny_openai_bpe_tokenizer(tiny_bpe, tmp_path):
    tok = load_clip_tokenizer(str(tiny_bpe))
    vocab, merges = read_openai_bpe(tiny_bpe)
    assert len(tok) == len(vocab) == 512 + len(TINY_MERGES) + 2
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    emb = FrozenCLIPEmbedder(max_length=8, tokenizer_path=str(tiny_bpe), text_config=dict(TINY, vocab_size=len(vocab)))
    out = emb.tokenize(["A  cat", "dog"])
    assert out.tolist() == [
        [bos, vocab["a</w>"], vocab["cat</w>"], eos, eos, eos, eos, eos],
        [bos, vocab["dog</w>"], eos, eos, eos, eos, eos, eos],
    ]
    # The same vocabulary written as vocab.json + merges.txt loads to the same ids.
    d = tmp_path / "tok"
    d.mkdir()
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    assert load_clip_tokenizer(str(d))(["a cat"])["input_ids"] == [[bos, vocab["a</w>"], vocab["cat</w>"], eos]]


def test_released_vocabulary_layout_and_truncation(tmp_path):
    # 48894 merges, as in bpe_simple_vocab_16e6: 49408 tokens, BOS 49406, EOS 49407.
    alphabet = list(bytes_to_unicode().values())
    merges = [(x, y) for x in alphabet for y in alphabet][:48894]
    path = write_openai_bpe(tmp_path / "bpe.txt.gz", merges)
    tok = load_clip_tokenizer(str(path))
    assert (len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49408, 49406, 49407, 49407)
    emb = FrozenCLIPEmbedder(tokenizer_path=str(path), text_config=TINY | {"max_length": 77})
    out = emb.tokenize("a photo of a cat")
    assert out.shape == (1, 77) and out[0, 0] == 49406
    n = int((out[0] != 49407).sum())
    assert (out[0, n:] == 49407).all() and n > 1
    long = "a photo of a cat " * 40
    with pytest.warns(UserWarning, match="truncated to max_length=77"):
        cut = emb.tokenize(long)
    reference = tok([long], truncation=True, max_length=77, padding="max_length")["input_ids"]
    assert cut.tolist() == reference and cut[0, -1] == 49407


def test_byte_alphabet_order_matches_byte_level_bpe():
    # Token ids 0..511 of the released vocabulary are these characters in this order.
    assert _byte_alphabet() == list(bytes_to_unicode().values())


def test_empty_hub_clip_tokenizer_is_an_error(monkeypatch):
    monkeypatch.setattr(transformers.CLIPTokenizer, "from_pretrained", classmethod(lambda cls, *a, **k: cls()))
    with pytest.raises(TokenizerUnavailableError, match="loaded empty.*bpe_simple_vocab_16e6"):
        load_clip_tokenizer("openai/clip-vit-large-patch14")


def test_open_clip_vocabulary_file_when_installed():
    open_clip = pytest.importorskip("open_clip", reason="open_clip_torch is not installed; its "
                                    "bpe_simple_vocab_16e6.txt.gz is the real CLIP vocabulary")
    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    ids = load_clip_tokenizer(str(path))(["a photo of a cat"])["input_ids"][0]
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]
