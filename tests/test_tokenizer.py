import json

import numpy as np
import pytest

from ankh3.tokenizer import RESIDUES, TokenizeError, Tokenizer


def test_default_layout_matches_t5_sentinels():
    tok = Tokenizer.default(256)
    assert len(tok) == 256
    assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
    assert tok.id("<extra_id_0>") == 255
    assert tok.sentinel_ids[0] == 255 and tok.sentinel_ids[1] == 254
    assert tok.num_sentinels == 256 - 3 - len(RESIDUES) - 3
    assert len({tok.task_id(t) for t in ("[NLU]", "[S2S]", "[NLG]")}) == 3


def test_encode_normalises_and_roundtrips():
    tok = Tokenizer.default()
    ids = tok.encode("mkv lA\nY*")
    assert ids.dtype == np.int32
    assert tok.decode(ids) == "MKVLAY"


def test_invalid_character_names_record_and_position():
    tok = Tokenizer.default()
    with pytest.raises(TokenizeError, match=r"record 'P1'.*'J'.*position 3"):
        tok.encode("MKJ", record="P1")
    assert tok.decode(tok.encode("MKJ", on_invalid="x")) == "MKX"


def test_from_hf_tokenizer_json(tmp_path):
    pieces = ["<pad>", "</s>", "<unk>"] + ["\u2581" + c for c in RESIDUES] + ["[NLU]", "[S2S]"]
    spec = {"model": {"type": "Unigram", "vocab": [[p, 0.0] for p in pieces]},
            "added_tokens": [{"id": 40 - 1 - k, "content": f"<extra_id_{k}>"} for k in range(5)]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    tok = Tokenizer.from_hf_dir(str(tmp_path))
    assert len(tok) == 40
    assert tok.encode("AC").tolist() == [3, 4]
    assert tok.id("<extra_id_0>") == 39 and tok.num_sentinels == 5
    assert not tok.has("[NLG]")
    with pytest.raises(TokenizeError, match=r"\[NLG\]"):
        tok.task_id("[NLG]")


def test_missing_tokenizer_files_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizeError, match="no tokenizer.json or spiece.model"):
        Tokenizer.from_hf_dir(str(tmp_path))
