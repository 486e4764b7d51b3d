"""Tokenizers: a thin wrapper over a HF `tokenizers` tokenizer in megatron's tokenizer interface.

`Tokenizer` is what the rest of grow_megatron (and megatron's GPTDataset) sees:
`.vocab_size`, `.eod` (the end-of-document id appended after every document), `.tokenize`,
`.detokenize`, `.unique_identifiers` (megatron hashes it into its index-cache names), and
`.save(dir)` which writes files a Hugging Face export can use as they are (`tokenizer.json`,
`tokenizer_config.json`, `special_tokens_map.json`).

Sources: a `tokenizer.json` file, a HF tokenizer directory holding one, or the embedded
default (a 4096-token byte-level BPE trained on the embedded corpus). `train_bpe_tokenizer`
trains a byte-level BPE of a chosen vocabulary size with HF `tokenizers`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterable

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from grow_megatron.config.base import ConfigError, DataError
from grow_megatron.data.assets import default_tokenizer_path

# End-of-document tokens tried, in order, when a tokenizer does not name its eos token.
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "[EOS]", "<|im_end|>")
DEFAULT_EOS = "<|endoftext|>"

try:  # megatron's abstract tokenizer base (GPTDataset only duck-types it, but be a proper subclass)
    from megatron.core.tokenizers import MegatronTokenizerBase as _Base
except Exception:  # pragma: no cover - megatron is a hard dependency; keep this importable without it
    _Base = object


class Tokenizer(_Base):
    """A HF `tokenizers.Tokenizer` with an end-of-document id, in megatron's tokenizer interface."""

    def __init__(self, hf_tokenizer, eod_token: str, *, source: str = "<memory>", config: dict | None = None):
        self._tok = hf_tokenizer
        self.source = source
        self.path = source
        self.eod_token = eod_token
        eod = hf_tokenizer.token_to_id(eod_token)
        if eod is None:
            raise ConfigError("data.tokenizer", source, f"has no token {eod_token!r} to mark the end of a document")
        self._eod = int(eod)
        self._vocab_size = int(hf_tokenizer.get_vocab_size(with_added_tokens=True))
        self._hf_config = dict(config or {})
        self.sha256 = hashlib.sha256(hf_tokenizer.to_str().encode("utf-8")).hexdigest()
        # megatron serialises this into the description (and cache key) of every dataset it builds.
        self.unique_identifiers = OrderedDict(
            [("class", "grow_megatron.Tokenizer"), ("sha256", self.sha256), ("eod", self._eod)]
        )

    # --- megatron's interface -------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eod(self) -> int:
        return self._eod

    @property
    def eos(self) -> int:
        return self._eod

    @property
    def pad(self) -> int:
        # No pad token: GPTDataset then pads (never, with full-length samples) with -1.
        raise NotImplementedError("grow_megatron tokenizers have no pad token")

    @property
    def vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)

    @property
    def inv_vocab(self) -> dict[int, str]:
        return {v: k for k, v in self.vocab.items()}

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` (no special tokens added; the caller appends `eod` per document)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def tokenize_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def detokenize(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def apply_chat_template(self, *args, **kwargs):  # pragma: no cover - not a chat tokenizer
        raise NotImplementedError("grow_megatron tokenizers have no chat template")

    # --- files ----------------------------------------------------------------------------
    def to_json(self) -> str:
        return self._tok.to_str()

    def save(self, directory: str) -> list[str]:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `directory`
        (loadable by `transformers.PreTrainedTokenizerFast.from_pretrained(directory)`)."""
        os.makedirs(directory, exist_ok=True)
        cfg = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.eod_token,
            "eos_token": self.eod_token,
            "unk_token": self.eod_token,
            "model_max_length": 1_000_000_000,
            "clean_up_tokenization_spaces": False,
        }
        cfg.update({k: v for k, v in self._hf_config.items() if k not in ("added_tokens_decoder",)})
        special = {"bos_token": cfg["bos_token"], "eos_token": cfg["eos_token"], "unk_token": cfg["unk_token"]}
        written = []
        for name, text in (
            ("tokenizer.json", self.to_json()),
            ("tokenizer_config.json", json.dumps(cfg, indent=2, default=str)),
            ("special_tokens_map.json", json.dumps(special, indent=2)),
        ):
            path = os.path.join(directory, name)
            _atomic_write_text(path, text)
            written.append(path)
        return written

    def describe(self) -> dict:
        """What a manifest records about the tokenizer."""
        return {
            "sha256": self.sha256,
            "vocab_size": self.vocab_size,
            "eod": self.eod,
            "eod_token": self.eod_token,
            "source": self.source,
        }

    def __repr__(self) -> str:
        return f"Tokenizer(source={self.source!r}, vocab_size={self.vocab_size}, eod={self.eod})"


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _pick_eos(hf_tokenizer, config: dict, source: str, eod_token: str | None) -> str:
    if eod_token:
        return eod_token
    tok = config.get("eos_token")
    if isinstance(tok, dict):  # AddedToken serialised
        tok = tok.get("content")
    if tok and hf_tokenizer.token_to_id(tok) is not None:
        return tok
    for cand in EOS_CANDIDATES:
        if hf_tokenizer.token_to_id(cand) is not None:
            return cand
    raise ConfigError(
        "data.tokenizer",
        source,
        f"no end-of-document token found (tried eos_token of tokenizer_config.json and {', '.join(EOS_CANDIDATES)}); "
        "set data.eod_token to one of its tokens",
    )


def load_tokenizer(
    path: str | None = None, *, eod_token: str | None = None, field: str = "data.tokenizer"
) -> Tokenizer:
    """Load a `tokenizer.json`, a HF tokenizer directory holding one, or (path None) the embedded default."""
    if path is None:
        return Tokenizer(HFTokenizer.from_file(default_tokenizer_path()), eod_token or DEFAULT_EOS, source="<embedded>")
    path = os.path.expanduser(path)
    config: dict = {}
    if os.path.isdir(path):
        file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(file):
            raise ConfigError(
                field,
                path,
                "directory has no tokenizer.json (give a tokenizer.json file or a HF tokenizer directory with one)",
            )
        cfg_file = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(cfg_file):
            with open(cfg_file, encoding="utf-8") as f:
                config = json.load(f)
    elif os.path.isfile(path):
        file = path
        cfg_file = os.path.join(os.path.dirname(path), "tokenizer_config.json")
        if os.path.basename(path) == "tokenizer.json" and os.path.isfile(cfg_file):
            with open(cfg_file, encoding="utf-8") as f:
                config = json.load(f)
    else:
        raise ConfigError(
            field, path, "no such file or directory (give a tokenizer.json file or a HF tokenizer directory)"
        )
    try:
        hf = HFTokenizer.from_file(file)
    except Exception as err:
        raise DataError(
            field, path, f"is not a HF tokenizers tokenizer.json ({type(err).__name__}: {str(err)[:120]})"
        ) from None
    keep = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "model_max_length") if k in config}
    return Tokenizer(hf, _pick_eos(hf, config, path, eod_token), source=os.path.abspath(path), config=keep)


def train_bpe_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int,
    out_path: str | None = None,
    eod_token: str = DEFAULT_EOS,
    min_frequency: int = 2,
) -> Tokenizer:
    """Train a byte-level BPE (HF `tokenizers`) of `vocab_size` tokens (the end-of-document token
    is id 0) on `texts`; write it to `out_path` (tokenizer.json) atomically if given."""
    if vocab_size < 300:
        raise ConfigError(
            "data.tokenizer_vocab_size", vocab_size, "must be at least 300 (256 byte tokens + merges + specials)"
        )
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[eod_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if out_path:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        _atomic_write_text(out_path, tok.to_str())
    return Tokenizer(tok, eod_token, source=os.path.abspath(out_path) if out_path else "<trained>")
