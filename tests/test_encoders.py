"""Conditioning encoders: class embedder, spatial rescaler, BERT embedder and its tokenizers,
the word-level tokenizer, and the x-transformers-layout encoder numerics."""
from __future__ import annotations

import math
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
import transformers

from ldm.config import ConfigError
from ldm.modules.encoders.modules import (
    BERTEmbedder,
    BERTTokenizer,
    ClassEmbedder,
    SpatialRescaler,
    TransformerEmbedder,
)
from ldm.modules.encoders.tokenizers import TokenizerUnavailableError, WordTokenizer, load_bert_tokenizer
from ldm.modules.x_transformer import Encoder, TransformerWrapper
from ldm.util import instantiate_from_config

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "dog", "red", "the", "on", "."]


@pytest.fixture
def vocab_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return path


def ids(*words):
    return [VOCAB.index(w) for w in words]


# ----------------------------------------------------------------------------------------------
# ClassEmbedder


def test_class_embedder_shapes_and_lookup():
    emb = ClassEmbedder(embed_dim=8, n_classes=10, key="class_label")
    assert emb.embedding.weight.shape == (10, 8)
    labels = torch.tensor([3, 0, 9])
    out = emb({"class_label": labels})
    assert out.shape == (3, 1, 8)
    assert torch.equal(out[:, 0], emb.embedding.weight[labels])
    assert torch.equal(emb.encode(labels), out)  # a bare label tensor works too


def test_class_embedder_null_class_is_opt_in_extra_index():
    assert ClassEmbedder(embed_dim=4, n_classes=1000).embedding.weight.shape == (1000, 4)
    assert ClassEmbedder(embed_dim=4, n_classes=1000).null_index is None
    emb = ClassEmbedder(embed_dim=4, n_classes=10, null_class=True)
    assert emb.embedding.weight.shape == (11, 4) and emb.null_index == 10
    uc = emb.get_unconditional_conditioning(2)
    assert torch.equal(uc, emb.embedding.weight[[10, 10]][:, None])
    assert torch.equal(emb(torch.tensor([10, 10])), uc)  # the null label embeds like the ∅ branch


def test_class_embedder_never_drops_labels_itself():
    """Guidance dropout is LatentDiffusion(ucg_rate=...) only: an embedder in training mode embeds every
    label as given, so the two can never drop a label twice."""
    emb = ClassEmbedder(embed_dim=2, n_classes=5, null_class=True).train()
    labels = torch.arange(5).repeat(200)
    assert torch.equal(emb(labels)[:, 0], emb.embedding.weight[labels])
    with pytest.raises(ConfigError, match=r"ucg_rate.*unexpected parameter"):
        instantiate_from_config({"target": "ldm.modules.encoders.modules.ClassEmbedder",
                                 "params": {"embed_dim": 4, "null_class": True, "ucg_rate": 0.1}})


def test_class_embedder_errors():
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        ClassEmbedder(embed_dim=4, n_classes=10)(torch.tensor([10]))
    with pytest.raises(ValueError, match="no null class"):
        ClassEmbedder(embed_dim=4, n_classes=1001).get_unconditional_conditioning(1)


# ----------------------------------------------------------------------------------------------
# SpatialRescaler


def test_spatial_rescaler_semantic_synthesis_shapes():
    resc = SpatialRescaler(n_stages=2, in_channels=182, out_channels=3)
    x = torch.randn(2, 182, 32, 32)
    out = resc.encode(x)
    assert out.shape == (2, 3, 8, 8)
    half = F.interpolate(F.interpolate(x, scale_factor=0.5, mode="bilinear"), scale_factor=0.5, mode="bilinear")
    assert torch.allclose(out, F.conv2d(half, resc.channel_mapper.weight), atol=1e-6)


def test_spatial_rescaler_without_channel_mapper():
    resc = SpatialRescaler(n_stages=1, method="nearest", multiplier=2.0)
    assert dict(resc.state_dict()) == {}
    x = torch.arange(4.0).reshape(1, 1, 2, 2)
    assert torch.equal(resc(x), x.repeat_interleave(2, -1).repeat_interleave(2, -2))
    with pytest.raises(ValueError, match="method"):
        SpatialRescaler(method="lanczos")


# ----------------------------------------------------------------------------------------------
# BERT tokenizer and embedder


def test_bert_tokenizer_from_local_vocab(vocab_file):
    tok = BERTTokenizer(vq_interface=False, max_length=8, vocab=str(vocab_file))
    out = tok.encode(["a photo of a cat", "the red dog"])
    assert out.dtype == torch.long
    assert out.tolist() == [
        ids("[CLS]", "a", "photo", "of", "a", "cat", "[SEP]", "[PAD]"),
        ids("[CLS]", "the", "red", "dog", "[SEP]", "[PAD]", "[PAD]", "[PAD]"),
    ]
    vq = BERTTokenizer(max_length=8, vocab=str(vocab_file)).encode("a cat")
    assert vq[0] is None and vq[1] is None and torch.equal(vq[2][2], tok("a cat"))


def test_bert_vocab_is_passed_as_vocab_not_vocab_file(vocab_file, monkeypatch):
    tok = load_bert_tokenizer(str(vocab_file))
    assert tok.vocab_size == len(VOCAB)
    assert tok("cat", add_special_tokens=False)["input_ids"] == ids("cat")

    # A BertTokenizerFast that drops the vocabulary (as `vocab_file=` does in transformers 5)
    # must be reported, not used.
    class Forgetful(transformers.BertTokenizerFast):
        def __init__(self, vocab=None, **kwargs):  # drops the file's vocabulary for a bare default one
            super().__init__(vocab={t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])},
                             **kwargs)

    # Patch the module the loader imports from (transformers may have re-registered itself in
    # sys.modules since this file imported it).
    monkeypatch.setattr(sys.modules["transformers"], "BertTokenizerFast", Forgetful)
    with pytest.raises(TokenizerUnavailableError, match="has 5 tokens, the file has 14"):
        load_bert_tokenizer(str(vocab_file))


def test_bert_truncation_warns_and_matches_transformers(vocab_file):
    tok = BERTTokenizer(vq_interface=False, max_length=6, vocab=str(vocab_file))
    prompt = "a photo of the red dog on a cat"
    with pytest.warns(UserWarning, match="truncated to max_length=6"):
        out = tok(prompt)
    reference = load_bert_tokenizer(str(vocab_file))(
        [prompt], truncation=True, max_length=6, padding="max_length", return_tensors="pt"
    )["input_ids"]
    assert torch.equal(out, reference)
    assert out[0, -1].item() == VOCAB.index("[SEP]")


def test_empty_hub_tokenizer_is_an_error(monkeypatch):
    # Offline, from_pretrained can hand back a tokenizer holding only its special tokens.
    monkeypatch.setattr(transformers.BertTokenizerFast, "from_pretrained", classmethod(lambda cls, *a, **k: cls()))
    with pytest.raises(TokenizerUnavailableError, match="loaded empty.*vocab.txt"):
        load_bert_tokenizer("bert-base-uncased")


def test_bert_embedder_builds_offline_and_loads_tokenizer_at_first_use(monkeypatch):
    calls = []

    def offline(cls, *args, **kwargs):
        calls.append(args)
        raise OSError("We couldn't connect to the hub")

    monkeypatch.setattr(transformers.BertTokenizerFast, "from_pretrained", classmethod(offline))
    emb = BERTEmbedder(n_embed=16, n_layer=1, vocab_size=50, max_seq_len=8, device="cuda")
    assert calls == []
    with pytest.raises(TokenizerUnavailableError, match="bert-base-uncased.*local vocab.txt"):
        emb.encode(["a photo of a cat"])
    assert calls == [("bert-base-uncased",)]


def test_bert_embedder_text_equals_token_ids(vocab_file):
    emb = BERTEmbedder(n_embed=16, n_layer=2, vocab_size=len(VOCAB), max_seq_len=8, tokenizer_vocab=str(vocab_file))
    z = emb.encode(["a photo of a cat", "the dog"])
    assert z.shape == (2, 8, 16)
    by_ids = BERTEmbedder(n_embed=16, n_layer=2, vocab_size=len(VOCAB), max_seq_len=8, use_tokenizer=False)
    assert set(by_ids.state_dict()) == set(emb.state_dict())
    by_ids.load_state_dict(emb.state_dict())
    tokens = torch.tensor([ids("[CLS]", "a", "photo", "of", "a", "cat", "[SEP]", "[PAD]"),
                           ids("[CLS]", "the", "dog", "[SEP]", "[PAD]", "[PAD]", "[PAD]", "[PAD]")])
    assert torch.equal(by_ids(tokens), z)


def test_bert_embedder_rejects_a_tokenizer_larger_than_its_table(vocab_file):
    emb = BERTEmbedder(n_embed=8, n_layer=1, vocab_size=10, max_seq_len=8, tokenizer_vocab=str(vocab_file))
    with pytest.raises(ValueError, match="14 tokens but vocab_size=10"):
        emb.encode("a cat")


def test_token_id_errors():
    emb = TransformerEmbedder(n_embed=8, n_layer=1, vocab_size=20, max_seq_len=4)
    assert emb.encode(torch.tensor([[1, 2, 3]])).shape == (1, 3, 8)
    with pytest.raises(ValueError, match="exceeds max_seq_len=4"):
        emb.encode(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        emb.encode(torch.tensor([[1, 20]]))


# ----------------------------------------------------------------------------------------------
# Word-level tokenizer


WORDS = ["a", "red", "green", "circle", "square", "on", "the", "left", "right"]


def test_word_tokenizer_round_trip():
    tok = WordTokenizer(WORDS, max_length=10)
    out = tok(["A red circle on the left", "a green square"])
    assert out.shape == (2, 10)
    assert tok.vocab_size == len(WORDS) + 4
    assert out[1].tolist() == [2, 4, 6, 8, 3, 0, 0, 0, 0, 0]
    assert tok.decode(out[1]) == "a green square"
    with pytest.warns(UserWarning, match="'.' is not in the vocabulary"):
        first = tok("a red circle on the left.")
    assert tok.decode(first[0]) == "a red circle on the left"


def test_word_tokenizer_truncation_and_unknowns():
    tok = WordTokenizer(WORDS, max_length=4, unknown="error")
    with pytest.warns(UserWarning, match="truncated to max_length=4"):
        out = tok("a red circle on the left")
    assert out.tolist() == [[2, 4, 5, 3]]
    with pytest.raises(KeyError, match="'blue'"):
        tok("a blue circle")
    with pytest.raises(ValueError, match="empty"):
        WordTokenizer([])


def test_bert_embedder_with_word_vocab():
    emb = BERTEmbedder(n_embed=8, n_layer=1, vocab_size=16, max_seq_len=6, word_vocab=WORDS)
    z = emb.encode(["a red square", "a green circle"])
    assert z.shape == (2, 6, 8)
    with pytest.raises(ValueError, match="13 tokens"):
        BERTEmbedder(n_embed=8, n_layer=1, vocab_size=12, word_vocab=WORDS)


def test_word_vocab_by_dotted_name_covers_synthetic_captions():
    from ldm.data.synthetic import SyntheticShapes, caption_vocabulary

    emb = BERTEmbedder(n_embed=8, n_layer=1, vocab_size=64, max_seq_len=32,
                       word_vocab="ldm.data.synthetic.caption_vocabulary")
    tok = emb.tknz_fn.tokenizer
    assert tok.vocab_size == len(caption_vocabulary()) + 4
    data = SyntheticShapes(size=16)
    captions = [data[i]["caption"] for i in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every caption word is known, nothing is truncated
        tokens = emb.tokenize(captions)
    assert [tok.decode(t) for t in tokens] == captions
    assert emb.encode(captions).shape == (4, 32, 8)


# ----------------------------------------------------------------------------------------------
# x-transformers-layout encoder: numerics against an explicit computation


def _reference_encoder(wrapper: TransformerWrapper, tokens: torch.Tensor, heads: int) -> torch.Tensor:
    """Pre-norm residual attention + GELU feed-forward, written out with the raw weights."""
    sd = wrapper.state_dict()
    x = sd["token_emb.weight"][tokens] + sd["pos_emb.emb.weight"][: tokens.shape[1]][None]
    dim = x.shape[-1]
    for i in range(len(wrapper.attn_layers.layers)):
        p = f"attn_layers.layers.{i}."
        h = F.layer_norm(x, (dim,), sd[p + "0.weight"], sd[p + "0.bias"])
        if i % 2 == 0:
            q, k, v = (h @ sd[p + f"1.to_{n}.weight"].T for n in "qkv")
            b, n, inner = q.shape
            d = inner // heads
            q, k, v = (t.reshape(b, n, heads, d).permute(0, 2, 1, 3) for t in (q, k, v))
            attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
            o = (attn @ v).permute(0, 2, 1, 3).reshape(b, n, inner)
            x = x + o @ sd[p + "1.to_out.weight"].T + sd[p + "1.to_out.bias"]
        else:
            u = h @ sd[p + "1.net.0.0.weight"].T + sd[p + "1.net.0.0.bias"]
            u = 0.5 * u * (1 + torch.erf(u / math.sqrt(2)))
            x = x + u @ sd[p + "1.net.2.weight"].T + sd[p + "1.net.2.bias"]
    return F.layer_norm(x, (dim,), sd["norm.weight"], sd["norm.bias"])


def test_x_transformer_matches_explicit_reference():
    layers = Encoder(dim=24, depth=2, heads=3, dim_head=8)
    wrapper = TransformerWrapper(num_tokens=30, max_seq_len=12, attn_layers=layers)
    assert wrapper.attn_layers.layers[0][1].to_q.weight.shape == (24, 24)
    tokens = torch.randint(0, 30, (2, 9))
    expected = _reference_encoder(wrapper, tokens, heads=3)
    got = wrapper(tokens, return_embeddings=True)
    assert torch.allclose(got, expected, atol=1e-5)
    logits = wrapper(tokens)
    assert torch.allclose(logits, expected @ wrapper.to_logits.weight.T + wrapper.to_logits.bias, atol=1e-5)
    # The explicit masked path agrees with the fused path when nothing is masked.
    keep_all = torch.ones(2, 9, dtype=torch.bool)
    assert torch.allclose(wrapper(tokens, return_embeddings=True, mask=keep_all), got, atol=1e-5)


def test_x_transformer_mask_hides_padded_keys():
    layers = Encoder(dim=16, depth=1, heads=2, dim_head=8)
    wrapper = TransformerWrapper(num_tokens=10, max_seq_len=6, attn_layers=layers)
    a = torch.tensor([[1, 2, 3, 0, 0, 0]])
    b = torch.tensor([[1, 2, 3, 7, 8, 9]])
    mask = torch.tensor([[True, True, True, False, False, False]])
    za, zb = (wrapper(t, return_embeddings=True, mask=mask) for t in (a, b))
    assert torch.allclose(za[:, :3], zb[:, :3], atol=1e-6)
    assert not torch.allclose(wrapper(a, return_embeddings=True)[:, :3], wrapper(b, return_embeddings=True)[:, :3])
    assert torch.isfinite(za).all()  # fully masked query rows attend uniformly, never NaN
