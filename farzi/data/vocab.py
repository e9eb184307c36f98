"""Vocabularies: token strings <-> ids, with the special tokens every task shares.

Id 0 is always ``<pad>``: it pads batches, is never a target and never appears
in Farzi Data. Language-model vocabularies add ``<unk>`` (1) and ``<eos>`` (2);
recommendation vocabularies hold the items at ids 1..N (with optional titles).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from farzi.data._read import reading
from farzi.errors import DataError

PAD = "<pad>"
UNK = "<unk>"
EOS = "<eos>"
LM_SPECIALS = (PAD, UNK, EOS)
REC_SPECIALS = (PAD,)


@dataclass
class Vocabulary:
    tokens: list[str]
    specials: dict[str, int]
    titles: list[str] | None = None  # item titles, aligned with ``tokens`` (rec only)
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index = {tok: i for i, tok in enumerate(self.tokens)}
        if len(self._index) != len(self.tokens):
            raise DataError("the vocabulary has duplicate tokens", "rebuild it with farzictl prepare")
        if self.specials.get(PAD) != 0:
            raise DataError("the vocabulary's <pad> token is not id 0", "rebuild it with farzictl prepare")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def num_specials(self) -> int:
        return len(self.specials)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int | None:
        return self.specials.get(UNK)

    @property
    def eos_id(self) -> int | None:
        return self.specials.get(EOS)

    def id(self, token: str) -> int:
        idx = self._index.get(token)
        if idx is not None:
            return idx
        if self.unk_id is None:
            raise KeyError(token)
        return self.unk_id

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.id(t) for t in tokens]

    def label(self, idx: int) -> str:
        """A human-readable name for ``idx``: the item's title if known, else the token."""
        if self.titles is not None and self.titles[idx]:
            return self.titles[idx]
        return self.tokens[idx]

    def to_json(self) -> dict:
        out: dict = {"tokens": self.tokens, "specials": self.specials}
        if self.titles is not None:
            out["titles"] = self.titles
        return out

    def sha256(self) -> str:
        """Hash of the token list (not titles): two datasets with equal hashes share ids."""
        return hashlib.sha256(json.dumps(self.tokens).encode("utf-8")).hexdigest()

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        again = "prepare the dataset again with farzictl prepare"
        with reading(path, directory_fix=f"remove it and {again}"):  # cannot open it: say why, it is not corrupt
            if not Path(path).exists():
                raise DataError(f"the vocabulary {path} is missing", again)
            text = Path(path).read_bytes()
        try:
            raw = json.loads(text.decode("utf-8"))
            return cls(tokens=list(raw["tokens"]), specials=dict(raw["specials"]), titles=raw.get("titles"))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"cannot read the vocabulary {path} ({exc.__class__.__name__})",
                "prepare the dataset again with farzictl prepare",
            ) from exc


def build_lm_vocab(sentences: Iterable[list[str]], size: int) -> tuple[Vocabulary, Counter]:
    """Top-``size`` words of the training sentences (ties broken alphabetically) + specials."""
    counts: Counter = Counter()
    for words in sentences:
        counts.update(words)
    for special in LM_SPECIALS:
        counts.pop(special, None)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]
    tokens = list(LM_SPECIALS) + [w for w, _ in ranked]
    return Vocabulary(tokens=tokens, specials={t: i for i, t in enumerate(LM_SPECIALS)}), counts


def build_item_vocab(items: list[str], titles: dict[str, str] | None = None) -> Vocabulary:
    """Items in the given order at ids 1..N after ``<pad>``."""
    tokens = list(REC_SPECIALS) + items
    title_list = None
    if titles is not None:
        title_list = [""] + [titles.get(it, "") for it in items]
    return Vocabulary(tokens=tokens, specials={PAD: 0}, titles=title_list)
