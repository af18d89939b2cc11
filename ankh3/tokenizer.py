"""Per-residue protein vocabulary: specials, amino acids, task tokens and T5 sentinels.

The default table matches the Ankh3 layout (vocab 256); a published checkpoint's own
tokenizer files can be read instead so that ids always match the model in use.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np

from ankh3.errors import UserError

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
RESIDUES = "ACDEFGHIKLMNPQRSTVWYXBZUO"  # 20 standard + X (any), B/Z (ambiguous), U (Sec), O (Pyl)
TASK_TOKENS = ("[NLU]", "[S2S]", "[NLG]")
DEFAULT_VOCAB_SIZE = 256
_SENTINEL = re.compile(r"^<extra_id_(\d+)>$")


class TokenizeError(UserError, ValueError):
    """A sequence holds a character outside the vocabulary, or a tokenizer file is unusable."""


def sentinel_piece(i: int) -> str:
    return f"<extra_id_{i}>"


@dataclasses.dataclass(frozen=True, eq=False)
class Tokenizer:
    """Maps residue strings to int32 ids and back.

    `pieces[i]` is the string of id i. Sentinel `<extra_id_k>` has id `sentinel_ids[k]`;
    in the T5 layout these count down from the top of the vocabulary.
    """

    pieces: tuple[str, ...]
    residue_pieces: dict[str, str] = dataclasses.field(default_factory=dict)  # letter -> piece

    def __post_init__(self):
        index = {p: i for i, p in enumerate(self.pieces) if p is not None}
        object.__setattr__(self, "_index", index)
        for name in (PAD, EOS, UNK):
            if name not in index:
                raise TokenizeError(f"tokenizer has no {name} token; a T5 vocabulary needs pad, eos and unk")
        lut = np.full(256, -1, np.int32)  # ascii byte -> id; -1 means invalid
        for letter in RESIDUES:
            piece = self.residue_pieces.get(letter, letter)
            if piece in index:
                lut[ord(letter)] = index[piece]
        if (lut[[ord(c) for c in RESIDUES[:20]]] < 0).any():
            raise TokenizeError("tokenizer lacks one of the 20 standard amino acids")
        object.__setattr__(self, "_lut", lut)
        sentinels = sorted((int(m.group(1)), i) for i, p in enumerate(self.pieces) if p and (m := _SENTINEL.match(p)))
        object.__setattr__(self, "sentinel_ids", np.array([i for _, i in sentinels], np.int32))

    # ---- construction -------------------------------------------------------------
    @classmethod
    def default(cls, vocab_size: int = DEFAULT_VOCAB_SIZE) -> "Tokenizer":
        base = [PAD, EOS, UNK, *RESIDUES, *TASK_TOKENS]
        n_sentinels = vocab_size - len(base)
        if n_sentinels < 1:
            raise TokenizeError(f"vocab_size {vocab_size} leaves no room for sentinels (need > {len(base)})")
        return cls(tuple(base + [sentinel_piece(n_sentinels - 1 - j) for j in range(n_sentinels)]))

    @classmethod
    def from_pieces(cls, id_to_piece: dict[int, str], vocab_size: int | None = None) -> "Tokenizer":
        """From an id -> piece map (gaps allowed); residues may be stored as 'A' or '▁A'."""
        size = max(vocab_size or 0, max(id_to_piece) + 1)
        pieces = [None] * size
        for i, p in id_to_piece.items():
            pieces[i] = p
        present = set(id_to_piece.values())
        residue_pieces = {c: (c if c in present else "\u2581" + c) for c in RESIDUES}
        return cls(tuple(pieces), residue_pieces)

    @classmethod
    def from_hf_dir(cls, path: str, vocab_size: int | None = None) -> "Tokenizer":
        """From a HF checkpoint directory: tokenizer.json, else spiece.model (+ added tokens)."""
        id_to_piece: dict[int, str] = {}
        tj = os.path.join(path, "tokenizer.json")
        sp = os.path.join(path, "spiece.model")
        if os.path.exists(tj):
            with open(tj) as f:
                spec = json.load(f)
            vocab = spec.get("model", {}).get("vocab", [])
            if isinstance(vocab, dict):
                id_to_piece.update({int(i): p for p, i in vocab.items()})
            else:  # Unigram: list of [piece, score]
                id_to_piece.update({i: entry[0] for i, entry in enumerate(vocab)})
            id_to_piece.update({int(t["id"]): t["content"] for t in spec.get("added_tokens", [])})
        elif os.path.exists(sp):
            import sentencepiece

            proc = sentencepiece.SentencePieceProcessor(model_file=sp)
            id_to_piece.update({i: proc.id_to_piece(i) for i in range(proc.get_piece_size())})
            extra = _read_json(os.path.join(path, "tokenizer_config.json")).get("extra_ids", 100)
            n = len(id_to_piece)  # HF T5Tokenizer appends extra_id_0 at the very top
            id_to_piece.update({n + extra - 1 - k: sentinel_piece(k) for k in range(extra)})
        else:
            raise TokenizeError(f"{path}: no tokenizer.json or spiece.model; pass a HF T5 checkpoint directory")
        added = _read_json(os.path.join(path, "added_tokens.json"))
        id_to_piece.update({int(i): p for p, i in added.items()})
        return cls.from_pieces(id_to_piece, vocab_size)

    # ---- ids ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.pieces)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def id(self, piece: str) -> int:
        try:
            return self._index[piece]
        except KeyError:
            raise TokenizeError(f"token {piece!r} is not in this vocabulary (size {len(self)})") from None

    def has(self, piece: str) -> bool:
        return piece in self._index

    @property
    def pad_id(self) -> int:
        return self._index[PAD]

    @property
    def eos_id(self) -> int:
        return self._index[EOS]

    @property
    def unk_id(self) -> int:
        return self._index[UNK]

    @property
    def num_sentinels(self) -> int:
        return len(self.sentinel_ids)

    def task_id(self, token: str) -> int:
        """Id of a task token such as '[NLU]'."""
        return self.id(token)

    # ---- text <-> ids ---------------------------------------------------------------
    def encode(self, sequence: str, record: str = "?", on_invalid: str = "error") -> np.ndarray:
        """Residues -> int32 ids (no specials added).

        Lower case is upper-cased, whitespace and a trailing '*' are removed. Any other
        character raises TokenizeError naming the record and position, or, with
        on_invalid='x', becomes X.
        """
        clean = "".join(sequence.split()).upper().rstrip("*")
        try:
            raw = np.frombuffer(clean.encode("ascii"), np.uint8)
        except UnicodeEncodeError:
            raw = np.frombuffer(clean.encode("ascii", "replace"), np.uint8)  # '?' is invalid below
        ids = self._lut[raw]
        bad = np.flatnonzero(ids < 0)
        if bad.size:
            if on_invalid == "x":
                ids[bad] = self._lut[ord("X")]
            elif on_invalid == "error":
                pos = int(bad[0])
                raise TokenizeError(
                    f"record {record!r}: invalid residue {clean[pos]!r} at position {pos + 1}; "
                    f"allowed: {RESIDUES} (set on_invalid='x' to map unknown letters to X)")
            else:
                raise TokenizeError(f"on_invalid must be 'error' or 'x', got {on_invalid!r}")
        return ids

    def decode(self, ids) -> str:
        """Ids -> text; residues as letters, everything else as its piece, padding dropped."""
        letters = {v: k for k, v in ((c, int(self._lut[ord(c)])) for c in RESIDUES) if v >= 0}
        out = []
        for i in np.asarray(ids).ravel().tolist():
            if i == self.pad_id:
                continue
            out.append(letters.get(i) or self.pieces[i] or f"<id_{i}>")
        return "".join(out)


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)
