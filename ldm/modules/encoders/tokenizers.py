"""Tokenizers for the text encoders, with guards against silent fallbacks.

Three sources of text ids:

* BERT WordPiece (the text-to-image LDMs, Sec. 4.3.1): a local ``vocab.txt`` or the hub name
  ``bert-base-uncased``.
* CLIP byte-level BPE (Stable Diffusion v1): a local directory with ``vocab.json`` +
  ``merges.txt``, an OpenAI-format merges file (``bpe_simple_vocab_16e6.txt[.gz]``, as shipped by
  the ``open_clip_torch`` and ``clip-anytorch`` packages), or a hub name.
* A word-level tokenizer built locally from a word list (the built-in synthetic captions).

Offline, transformers' ``from_pretrained`` can return a tokenizer with only its special tokens
instead of raising, and ``BertTokenizerFast(vocab_file=...)`` ignores the file in transformers 5.
Every loader here checks what it got and raises :class:`TokenizerUnavailableError` naming what
to provide, so a prompt never silently becomes a row of [UNK].
"""
from __future__ import annotations

import gzip
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

BERT_HUB_NAME = "bert-base-uncased"
CLIP_HUB_NAME = "openai/clip-vit-large-patch14"
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
_PROBE = "a photo of a cat"  # words every real English vocabulary knows


class TokenizerUnavailableError(RuntimeError):
    """A tokenizer could not be loaded, or loaded empty."""


# ----------------------------------------------------------------------------------------------
# Padding / truncation shared by all tokenizers


def pad_or_truncate(
    sequences: Sequence[Sequence[int]],  # ids with their start/end specials already added
    max_length: int,
    pad_id: int,
    what: str = "prompt",
) -> torch.Tensor:
    """[batch, max_length] ids; a too-long sequence keeps its last (end) token and warns."""
    rows = []
    for i, ids in enumerate(sequences):
        ids = list(ids)
        if len(ids) > max_length:
            warnings.warn(
                f"{what} {i} has {len(ids)} tokens and is truncated to max_length={max_length}",
                stacklevel=3,
            )
            ids = ids[: max_length - 1] + ids[-1:]
        rows.append(ids + [pad_id] * (max_length - len(ids)))
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), max_length)


def _as_list(text: str | Sequence[str]) -> list[str]:
    if isinstance(text, str):
        return [text]
    text = list(text)
    if not all(isinstance(t, str) for t in text):
        raise TypeError(f"expected a string or a list of strings, got {[type(t).__name__ for t in text]}")
    return text


def hf_encode(tokenizer: Any, text: str | Sequence[str], max_length: int) -> torch.Tensor:
    """Ids [batch, max_length] from a transformers tokenizer: its specials, padded with its pad id."""
    seqs = tokenizer(_as_list(text), add_special_tokens=True, truncation=False)["input_ids"]
    return pad_or_truncate(seqs, max_length, tokenizer.pad_token_id)


def _check_loaded(tokenizer: Any, source: str, min_vocab: int, what: str, provide: str) -> Any:
    """Reject tokenizers that came back empty: tiny vocabulary or a probe text all [UNK]."""
    size = len(tokenizer)
    probe = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    all_unk = bool(probe) and all(i == tokenizer.unk_token_id for i in probe)
    if size < min_vocab or not probe or all_unk:
        raise TokenizerUnavailableError(
            f"the {what} tokenizer from {source!r} loaded empty (vocabulary of {size} tokens; "
            f"{_PROBE!r} -> {probe}). This happens offline when the files are not cached. {provide}"
        )
    return tokenizer


def _from_pretrained(cls: Any, source: str, what: str, on_error: str, on_empty: str) -> Any:
    """``cls.from_pretrained(source)`` (hub name or cache), failing clearly, never loading empty."""
    try:
        tok = cls.from_pretrained(source)
    except Exception as exc:
        raise TokenizerUnavailableError(
            f"could not load the {what} tokenizer {source!r} ({type(exc).__name__}: {exc}). {on_error}"
        ) from exc
    return _check_loaded(tok, source, 1000, what, on_empty)


# ----------------------------------------------------------------------------------------------
# BERT WordPiece


def read_wordpiece_vocab(path: str | Path) -> dict[str, int]:
    """One token per line; the line number is the id."""
    p = Path(path)
    if not p.is_file():
        raise TokenizerUnavailableError(f"BERT vocabulary file {str(p)!r} does not exist")
    tokens = p.read_text(encoding="utf-8").splitlines()
    while tokens and not tokens[-1]:
        tokens.pop()
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise TokenizerUnavailableError(f"BERT vocabulary file {str(p)!r} has duplicate tokens")
    missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in vocab]
    if missing:
        raise TokenizerUnavailableError(f"BERT vocabulary file {str(p)!r} lacks the special tokens {missing}")
    return vocab


def load_bert_tokenizer(source: str = BERT_HUB_NAME) -> Any:
    """A ``BertTokenizerFast`` from a local ``vocab.txt`` (file, or directory holding one) or a hub name."""
    from transformers import BertTokenizerFast

    p = Path(source)
    if p.is_dir() and (p / "vocab.txt").is_file():
        p = p / "vocab.txt"
    if p.is_file():
        vocab = read_wordpiece_vocab(p)
        # transformers 5 ignores `vocab_file=`; the vocabulary must be passed as `vocab=`.
        tok = BertTokenizerFast(vocab=vocab, do_lower_case=True)
        if tok.vocab_size != len(vocab):
            raise TokenizerUnavailableError(
                f"BERT tokenizer built from {str(p)!r} has {tok.vocab_size} tokens, the file has {len(vocab)}"
            )
        return tok
    if p.suffix == ".txt" or p.is_absolute() or source.startswith("."):
        raise TokenizerUnavailableError(f"BERT vocabulary {source!r} is not an existing file or directory")
    return _from_pretrained(BertTokenizerFast, source, "BERT",
                            "Pass a local vocab.txt (tokenizer_vocab=... / vocab=...).",
                            "Pass the path of a local WordPiece vocab.txt (e.g. the bert-base-uncased vocab.txt) "
                            "instead.")


# ----------------------------------------------------------------------------------------------
# CLIP byte-level BPE


def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the bytes 0..255, in id order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    # Printable bytes keep their character; the rest are mapped above 255 in byte order.
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def read_openai_bpe(
    path: str | Path,
    num_merges: int = 49152 - 256 - 2,  # merges the released CLIP vocabulary uses (the file holds more)
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges from an OpenAI-format merges file (header line, then "a b" pairs).

    The vocabulary is: 256 byte characters, the same with the end-of-word mark ``</w>``, one token
    per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` (49408 tokens for CLIP).
    """
    p = Path(path)
    if not p.is_file():
        raise TokenizerUnavailableError(f"CLIP BPE file {str(p)!r} does not exist")
    raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    lines = raw.decode("utf-8").split("\n")[1 : num_merges + 1]
    merges = [tuple(line.split()) for line in lines if line]
    if not merges or any(len(m) != 2 for m in merges):
        raise TokenizerUnavailableError(f"{str(p)!r} is not a BPE merges file (expected 'a b' pairs after a header)")
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [CLIP_BOS, CLIP_EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def read_vocab_and_merges(directory: str | Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``vocab.json`` + ``merges.txt`` as written by transformers' CLIP tokenizer."""
    d = Path(directory)
    vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
    lines = (d / "merges.txt").read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    return vocab, merges


def load_clip_tokenizer(source: str = CLIP_HUB_NAME) -> Any:
    """A CLIP BPE tokenizer (bos 49406, eos 49407, padded with eos for the released vocabulary).

    ``source``: a directory with vocab.json + merges.txt, an OpenAI-format merges file
    (``bpe_simple_vocab_16e6.txt.gz``), or a hub name.
    """
    from transformers import CLIPTokenizer

    p = Path(source)
    if (p.is_dir() and (p / "vocab.json").is_file() and (p / "merges.txt").is_file()) or p.is_file():
        vocab, merges = read_vocab_and_merges(p) if p.is_dir() else read_openai_bpe(p)
        if CLIP_BOS not in vocab or CLIP_EOS not in vocab:
            raise TokenizerUnavailableError(f"CLIP vocabulary {source!r} lacks {CLIP_BOS} / {CLIP_EOS}")
        tok = CLIPTokenizer(vocab=vocab, merges=merges)
        if len(tok) != len(vocab):
            raise TokenizerUnavailableError(
                f"CLIP tokenizer from {source!r} has {len(tok)} tokens, expected {len(vocab)}"
            )
        return tok
    if p.is_absolute() or source.startswith(".") or p.suffix in (".gz", ".txt", ".json"):
        raise TokenizerUnavailableError(f"CLIP tokenizer source {source!r} is not an existing file or directory")
    return _from_pretrained(CLIPTokenizer, source, "CLIP", "Pass tokenizer_path=... (see load_clip_tokenizer).",
                            "Pass tokenizer_path= a directory with vocab.json + merges.txt, or an OpenAI-format "
                            "bpe_simple_vocab_16e6.txt.gz (shipped by the open_clip_torch package).")


# ----------------------------------------------------------------------------------------------
# Word-level tokenizer for closed vocabularies


class WordTokenizer:
    """Whitespace/punctuation word tokenizer over a fixed word list, built locally.

    Ids: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, then the words in first-seen order. Encoding gives
    ``[CLS] w1 ... wk [SEP] [PAD]...`` of length ``max_length``.
    """

    specials = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")

    def __init__(
        self,
        words: Sequence[str],  # the closed vocabulary
        max_length: int = 77,  # padded/truncated length including [CLS] and [SEP]
        lowercase: bool = True,
        unknown: Literal["warn", "error", "unk"] = "warn",  # what an out-of-vocabulary word does
    ):
        if isinstance(words, str):
            raise TypeError("words must be a sequence of words, not one string")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 to hold [CLS] and [SEP], got {max_length}")
        if unknown not in ("warn", "error", "unk"):
            raise ValueError(f"unknown must be 'warn', 'error' or 'unk', got {unknown!r}")
        self.lowercase = lowercase
        self.max_length = max_length
        self.unknown = unknown
        vocab: dict[str, int] = {s: i for i, s in enumerate(self.specials)}
        for w in words:
            w = w.lower() if lowercase else w
            if not w or any(c.isspace() for c in w):
                raise ValueError(f"vocabulary entries must be non-empty single words, got {w!r}")
            vocab.setdefault(w, len(vocab))
        if len(vocab) == len(self.specials):
            raise ValueError("WordTokenizer needs at least one word; the word list is empty")
        self.vocab = vocab
        self.inverse = {i: w for w, i in vocab.items()}
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = range(4)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def split(self, text: str) -> list[str]:
        """Words and single punctuation marks (so "cat." matches "cat")."""
        text = text.lower() if self.lowercase else text
        out, word = [], []
        for c in text:
            if c.isalnum() or c in "-'_":
                word.append(c)
                continue
            if word:
                out.append("".join(word))
                word = []
            if not c.isspace():
                out.append(c)
        if word:
            out.append("".join(word))
        return out

    def ids(self, text: str) -> list[int]:
        """[CLS] + word ids + [SEP], untruncated."""
        ids = [self.cls_id]
        for w in self.split(text):
            i = self.vocab.get(w)
            if i is None:
                if self.unknown == "error":
                    raise KeyError(f"word {w!r} of prompt {text!r} is not in the tokenizer vocabulary")
                if self.unknown == "warn":
                    warnings.warn(f"word {w!r} is not in the vocabulary; encoded as [UNK]", stacklevel=3)
                i = self.unk_id
            ids.append(i)
        return ids + [self.sep_id]

    def __call__(self, text: str | Sequence[str]) -> torch.Tensor:
        return pad_or_truncate([self.ids(t) for t in _as_list(text)], self.max_length, self.pad_id)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """Words of one id sequence, without specials."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return " ".join(self.inverse[i] for i in ids if i >= len(self.specials))
