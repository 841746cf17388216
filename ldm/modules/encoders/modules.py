"""Conditioning encoders τ_θ (Sec. 3.3): y → τ_θ(y) ∈ R^{M×d_τ} for cross-attention, or a
spatial map for concatenation (Sec. 4.3.2).

* :class:`ClassEmbedder` — class-conditional ImageNet (Sec. 4.3.1, Tab. 3), optional null class
  for classifier-free guidance.
* :class:`BERTEmbedder` / :class:`TransformerEmbedder` — BERT tokenizer + transformer trained
  jointly with the LDM (text-to-image and layout-to-image, Sec. 4.3.1).
* :class:`SpatialRescaler` — resizes semantic maps for concat conditioning (Sec. 4.3.2).
* :class:`FrozenCLIPEmbedder` — the frozen CLIP ViT-L/14 text encoder of Stable Diffusion v1.

Every class keeps the original import path and state-dict keys. The ``device`` arguments are
accepted for config compatibility only: modules follow ``.to(device)`` and put token ids on the
device of their parameters. Tokenizers load lazily at first encode, so every reference config
builds offline.
"""
from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ldm.config.targets import get_obj_from_str
from ldm.modules.encoders.clip import CLIPTextModel, load_clip_text_weights, resolve_text_config
from ldm.modules.encoders.tokenizers import (
    BERT_HUB_NAME,
    WordTokenizer,
    hf_encode,
    load_bert_tokenizer,
    load_clip_tokenizer,
)
from ldm.modules.x_transformer import Encoder, TransformerWrapper

Device = Union[str, torch.device, None]
Text = Union[str, Sequence[str]]


class AbstractEncoder(nn.Module, abc.ABC):
    """A conditioning encoder: ``encode(y)`` gives what the denoiser is conditioned on."""

    @abc.abstractmethod
    def encode(self, *args: Any, **kwargs: Any) -> Any:
        """τ_θ(y): the conditioning the denoiser receives."""

    @property
    def device(self) -> torch.device:
        """Device of the first parameter or buffer (CPU for parameter-free encoders)."""
        for t in (*self.parameters(), *self.buffers()):
            return t.device
        return torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# Class labels


class ClassEmbedder(AbstractEncoder):
    """Class label → one learned token [b, 1, embed_dim] for cross-attention.

    Null class for classifier-free guidance (opt-in, ``null_class=True``): the embedding gets one
    extra row, index ``n_classes``. The embedder never drops labels itself: the training dropout
    is ``LatentDiffusion(ucg_rate=...)``, which works for every condition type and replaces labels
    by ``null_index``. Opt-in so the released configs keep their table size: ``cin256-v2`` instead
    reserves label 1000 by declaring ``n_classes: 1001`` (pass label 1000 for its unconditional
    branch); the same checkpoint also loads into ``n_classes=1000, null_class=True``.
    """

    def __init__(
        self,
        embed_dim: int,  # d_τ
        n_classes: int = 1000,  # real classes
        key: str = "class",  # batch entry holding the labels
        null_class: bool = False,  # add the null class at index n_classes
    ):
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        self.key = key
        self.n_classes = n_classes
        self.null_class = null_class
        self.embedding = nn.Embedding(n_classes + int(null_class), embed_dim)

    @property
    def null_index(self) -> Optional[int]:
        return self.n_classes if self.null_class else None

    def forward(self, batch: Union[Mapping[str, Any], torch.Tensor], key: Optional[str] = None) -> torch.Tensor:
        labels = batch if isinstance(batch, torch.Tensor) else batch[key or self.key]
        labels = torch.as_tensor(labels, device=self.embedding.weight.device).long().reshape(-1)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.embedding.num_embeddings):
            raise ValueError(
                f"class labels must lie in [0, {self.embedding.num_embeddings}), got range "
                f"[{int(labels.min())}, {int(labels.max())}] (n_classes={self.n_classes}, null_class={self.null_class})"
            )
        return self.embedding(labels[:, None])

    def encode(self, batch: Union[Mapping[str, Any], torch.Tensor], key: Optional[str] = None) -> torch.Tensor:
        return self(batch, key)

    def get_unconditional_conditioning(self, batch_size: int, device: Device = None) -> torch.Tensor:
        """The null-class embedding [batch_size, 1, embed_dim] (the ∅ branch of guidance)."""
        if not self.null_class:
            raise ValueError(
                "this ClassEmbedder has no null class (null_class=False); for cin256-v2 pass the reserved label "
                f"{self.n_classes - 1} explicitly"
            )
        labels = torch.full((batch_size, 1), self.n_classes, dtype=torch.long, device=device or self.device)
        return self.embedding(labels)


# ----------------------------------------------------------------------------------------------
# Token-id transformers (BERT-conditioned LDMs)


class TransformerEmbedder(AbstractEncoder):
    """Token ids [b, n] → transformer embeddings [b, n, n_embed] (no tokenizer)."""

    def __init__(
        self,
        n_embed: int,  # d_τ
        n_layer: int,  # (attention, feed-forward) pairs
        vocab_size: int,
        max_seq_len: int = 77,
        device: Device = None,  # accepted for config compatibility; use .to(device)
    ):
        super().__init__()
        self.transformer = TransformerWrapper(
            num_tokens=vocab_size, max_seq_len=max_seq_len, attn_layers=Encoder(dim=n_embed, depth=n_layer)
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.transformer(tokens.to(self.transformer.token_emb.weight.device), return_embeddings=True)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self(tokens)


class BERTTokenizer(AbstractEncoder):
    """Text → BERT WordPiece ids [b, max_length] ([CLS] … [SEP] [PAD]…), loaded at first use."""

    def __init__(
        self,
        device: Device = None,  # accepted for config compatibility; ids follow .to(device)
        vq_interface: bool = True,  # encode() returns (None, None, [None, None, ids]) like a VQ model
        max_length: int = 77,
        vocab: Optional[str] = None,  # local vocab.txt (or its directory) or hub name; default bert-base-uncased
    ):
        super().__init__()
        self.vq_interface = vq_interface
        self.max_length = max_length
        self.vocab = vocab or BERT_HUB_NAME
        self._tokenizer: Any = None
        # Empty, non-persistent: lets the ids follow .to(device) without adding state-dict keys.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_bert_tokenizer(self.vocab)
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def forward(self, text: Text) -> torch.Tensor:
        return hf_encode(self.tokenizer, text, self.max_length).to(self._anchor.device)

    @torch.no_grad()
    def encode(self, text: Text) -> Any:
        tokens = self(text)
        return (None, None, [None, None, tokens]) if self.vq_interface else tokens

    def decode(self, text: Any) -> Any:
        return text


class WordLevelTokenizer(AbstractEncoder):
    """Text → word ids [b, max_length] over a closed vocabulary (see :class:`WordTokenizer`)."""

    def __init__(
        self,
        words: Union[Sequence[str], str],  # word list, or the dotted name of one or of a function returning one
        max_length: int = 77,
        device: Device = None,  # accepted for config compatibility
    ):
        super().__init__()
        if isinstance(words, str):
            # e.g. "ldm.data.synthetic.caption_vocabulary"; resolved like a config target (trusted prefixes only)
            words = get_obj_from_str(words, path="word_vocab")
            words = words() if callable(words) else words
        self.tokenizer = WordTokenizer(list(words), max_length=max_length)
        self.register_buffer("_anchor", torch.empty(0), persistent=False)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def forward(self, text: Text) -> torch.Tensor:
        return self.tokenizer(text).to(self._anchor.device)

    def encode(self, text: Text) -> torch.Tensor:
        return self(text)


class BERTEmbedder(AbstractEncoder):
    """τ_θ of the text-to-image LDM (Sec. 4.3.1): BERT tokenizer + a transformer trained jointly.

    Tokenizer choice: ``use_tokenizer=False`` takes token ids (layout-to-image feeds box tokens);
    otherwise ``word_vocab`` (a word list or its dotted name) selects a local word-level
    tokenizer, and ``tokenizer_vocab`` a BERT WordPiece vocabulary (default bert-base-uncased,
    loaded at first encode).
    """

    def __init__(
        self,
        n_embed: int,  # d_τ
        n_layer: int,  # (attention, feed-forward) pairs
        vocab_size: int = 30522,  # rows of the token embedding (bert-base-uncased has 30522)
        max_seq_len: int = 77,  # also the tokenizer's padded length
        device: Device = None,  # accepted for config compatibility; use .to(device)
        use_tokenizer: bool = True,
        embedding_dropout: float = 0.0,
        tokenizer_vocab: Optional[str] = None,  # BERT vocab.txt path or hub name
        word_vocab: Union[Sequence[str], str, None] = None,  # word list or dotted name (see WordLevelTokenizer)
    ):
        super().__init__()
        if word_vocab is not None and tokenizer_vocab is not None:
            raise ValueError("give either tokenizer_vocab (BERT WordPiece) or word_vocab (word-level), not both")
        self.use_tknz_fn = use_tokenizer
        self.vocab_size = vocab_size
        if use_tokenizer:
            if word_vocab is not None:
                self.tknz_fn = WordLevelTokenizer(word_vocab, max_length=max_seq_len)
                if self.tknz_fn.vocab_size > vocab_size:
                    raise ValueError(
                        f"word_vocab has {self.tknz_fn.vocab_size} tokens (with specials) but vocab_size={vocab_size}"
                    )
            else:
                self.tknz_fn = BERTTokenizer(vq_interface=False, max_length=max_seq_len, vocab=tokenizer_vocab)
        self.transformer = TransformerWrapper(
            num_tokens=vocab_size,
            max_seq_len=max_seq_len,
            attn_layers=Encoder(dim=n_embed, depth=n_layer),
            emb_dropout=embedding_dropout,
        )

    def tokenize(self, text: Text) -> torch.Tensor:
        if not self.use_tknz_fn:
            raise ValueError("this BERTEmbedder was built with use_tokenizer=False; pass token ids")
        tokens = self.tknz_fn(text)
        if isinstance(self.tknz_fn, BERTTokenizer) and self.tknz_fn.vocab_size > self.vocab_size:
            raise ValueError(
                f"the tokenizer {self.tknz_fn.vocab!r} has {self.tknz_fn.vocab_size} tokens "
                f"but vocab_size={self.vocab_size}"
            )
        return tokens

    def forward(self, text: Union[Text, torch.Tensor]) -> torch.Tensor:
        tokens = self.tokenize(text) if self.use_tknz_fn else text
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"expected token ids as a tensor (use_tokenizer=False), got {type(tokens).__name__}")
        return self.transformer(tokens.to(self.transformer.token_emb.weight.device), return_embeddings=True)

    def encode(self, text: Union[Text, torch.Tensor]) -> torch.Tensor:
        return self(text)


# ----------------------------------------------------------------------------------------------
# Spatial conditioning


class SpatialRescaler(nn.Module):
    """Resize a spatial condition by ``multiplier`` ``n_stages`` times, then optionally map its
    channels with a 1×1 convolution (semantic maps concatenated to z_t, Sec. 4.3.2)."""

    methods = ("nearest", "linear", "bilinear", "trilinear", "bicubic", "area")

    def __init__(
        self,
        n_stages: int = 1,  # number of successive resizes
        method: str = "bilinear",
        multiplier: float = 0.5,  # scale factor per stage
        in_channels: int = 3,
        out_channels: Optional[int] = None,  # None: keep the channels (no channel_mapper)
        bias: bool = False,
    ):
        super().__init__()
        if n_stages < 0:
            raise ValueError(f"n_stages must be >= 0, got {n_stages}")
        if method not in self.methods:
            raise ValueError(f"method must be one of {self.methods}, got {method!r}")
        self.n_stages = n_stages
        self.method = method
        self.multiplier = multiplier
        self.remap_output = out_channels is not None
        if self.remap_output:
            self.channel_mapper = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.n_stages):
            x = F.interpolate(x, scale_factor=self.multiplier, mode=self.method)
        return self.channel_mapper(x) if self.remap_output else x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)


# ----------------------------------------------------------------------------------------------
# Frozen CLIP (Stable Diffusion v1)


class FrozenCLIPEmbedder(AbstractEncoder):
    """CLIP text transformer, frozen; the last hidden state [b, 77, 768] is the SD v1 conditioning.

    Builds offline with random weights (the SD checkpoint carries ``cond_stage_model.*``).
    ``pretrained=True`` loads the text tower of ``version`` now (local directory/file or hub);
    the tokenizer loads at first encode from ``tokenizer_path`` or ``version``.
    """

    def __init__(
        self,
        version: str = "openai/clip-vit-large-patch14",  # hub name or local directory
        device: Device = None,  # accepted for config compatibility; use .to(device)
        max_length: int = 77,
        freeze: bool = True,
        pretrained: bool = False,  # load released text weights at construction (needs files or network)
        tokenizer_path: Optional[str] = None,  # vocab.json+merges.txt directory or bpe_simple_vocab_16e6.txt.gz
        text_config: Optional[dict] = None,  # override sizes (fields of clip.CLIPTextConfig), e.g. for tests
    ):
        super().__init__()
        self.version = version
        self.max_length = max_length
        self.tokenizer_path = tokenizer_path
        cfg = resolve_text_config(version, text_config)
        if max_length > cfg.max_length:
            raise ValueError(f"max_length={max_length} exceeds the CLIP context length {cfg.max_length}")
        self.transformer = CLIPTextModel(cfg)
        if pretrained:
            load_clip_text_weights(self.transformer, version)
        self._tokenizer: Any = None
        if freeze:
            self.freeze()

    def freeze(self) -> None:
        self.transformer = self.transformer.eval()
        for p in self.parameters():
            p.requires_grad = False

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_clip_tokenizer(self.tokenizer_path or self.version)
        return self._tokenizer

    def tokenize(self, text: Text) -> torch.Tensor:
        tokens = hf_encode(self.tokenizer, text, self.max_length)
        vocab = self.transformer.config.vocab_size
        if int(tokens.max()) >= vocab:
            raise ValueError(f"tokenizer ids reach {int(tokens.max())} but the text model has vocab_size={vocab}")
        return tokens

    def forward(self, text: Union[Text, torch.Tensor]) -> torch.Tensor:
        tokens = text if isinstance(text, torch.Tensor) else self.tokenize(text)
        return self.transformer(tokens.to(self.transformer.text_model.embeddings.position_ids.device))

    def encode(self, text: Union[Text, torch.Tensor]) -> torch.Tensor:
        return self(text)
