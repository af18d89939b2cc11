"""Converted HF T5 checkpoints compute what transformers computes, and exports load back into it.

Needs the test-only extras (torch CPU, transformers); tiny random models, float32.
"""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ankh3 import hf_checkpoint  # noqa: E402
from ankh3.model import T5, load_flat_params  # noqa: E402
from ankh3.tokenizer import RESIDUES, Tokenizer  # noqa: E402

from flax import nnx  # noqa: E402

VOCAB = 40  # embedding rows; the tokenizer below has 35, as HF checkpoints pad their tables
SENTINELS = [f"<extra_id_{k}>" for k in range(5)]
VARIANTS = {"gelu_untied": ("gated-gelu", False), "silu_untied": ("gated-silu", False),
            "silu_tied": ("gated-silu", True)}


def relative_error(ours, ref):
    return float(np.linalg.norm(np.asarray(ours, np.float64) - ref) / np.linalg.norm(ref))


def build_hf_tokenizer():
    """A T5 Unigram tokenizer in the Ankh layout: specials, '▁X' residues, task tokens, sentinels on top."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + c, -1.0) for c in RESIDUES]
    vocab += [("[NLU]", 0.0), ("[S2S]", 0.0)] + [(s, 0.0) for s in reversed(SENTINELS)]
    return transformers.T5Tokenizer(vocab=vocab, extra_ids=0, additional_special_tokens=["[NLU]", "[S2S]", *SENTINELS])


def build_hf_model(proj, tied, seed):
    torch.manual_seed(seed)
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=16, d_ff=24, d_kv=4, num_heads=3, num_layers=3, num_decoder_layers=2,
        feed_forward_proj=proj, tie_word_embeddings=tied, relative_attention_num_buckets=8,
        relative_attention_max_distance=16, dropout_rate=0.0, decoder_start_token_id=0)
    model = transformers.T5ForConditionalGeneration(config).eval()
    if not tied:  # transformers 5 ties the head in memory even when told not to; give it its own
        model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 16))
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """variant -> (HF model, HF dir, our model, our tokenizer)."""
    out = {}
    for seed, (name, (proj, tied)) in enumerate(VARIANTS.items()):
        path = str(tmp_path_factory.mktemp(name))
        hf_model = build_hf_model(proj, tied, seed)
        hf_model.save_pretrained(path)
        build_hf_tokenizer().save_pretrained(path)
        cfg, flat, tok = hf_checkpoint.import_hf(path)
        ours = load_flat_params(T5(cfg, rngs=nnx.Rngs(0)), flat)
        out[name] = (hf_model, path, ours, tok)
    return out


@pytest.fixture(scope="module")
def batch():
    """Three inputs of lengths 24, 17 and 5 (padded), longer than max_distance so far buckets are used."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, VOCAB, (3, 24))
    mask = np.arange(24)[None, :] < np.array([24, 17, 5])[:, None]
    tokens[~mask] = 0
    decoder_inputs = rng.integers(3, VOCAB, (3, 7))
    decoder_inputs[:, 0] = 0
    return tokens, mask, decoder_inputs


def hf_forward(model, tokens, mask, decoder_inputs):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)),
                    decoder_input_ids=torch.tensor(decoder_inputs))
    return out.encoder_last_hidden_state.numpy(), out.logits.numpy()


def greedy(model, tokens, mask, steps, eos_id=1, pad_id=0):
    """Greedy decoding with our model, stopping a row at EOS and padding it afterwards (as HF does)."""
    encoded = model.encode(tokens, mask)
    decode = nnx.jit(lambda m, *args: m.decode(*args))
    decoded = np.zeros((tokens.shape[0], steps + 1), np.int64)  # column 0 is the decoder start (pad)
    done = np.zeros(tokens.shape[0], bool)
    for t in range(steps):
        # Fixed shape: positions after t are ignored by causal attention, so one compile serves all steps.
        logits = np.asarray(decode(model, encoded, mask, decoded[:, :steps]))
        nxt = np.where(done, pad_id, logits[:, t].argmax(-1))
        decoded[:, t + 1] = nxt
        done |= nxt == eos_id
    return decoded


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_encoder_and_logits_match_transformers(checkpoints, batch, variant):
    hf_model, _, ours, _ = checkpoints[variant]
    tokens, mask, decoder_inputs = batch
    ref_hidden, ref_logits = hf_forward(hf_model, tokens, mask, decoder_inputs)
    hidden = np.asarray(ours.encode(tokens, mask))
    logits = np.asarray(ours(tokens, decoder_inputs, mask))
    assert relative_error(hidden[mask], ref_hidden[mask]) < 1e-5
    assert relative_error(logits, ref_logits) < 1e-5


@pytest.mark.parametrize("variant", ["gelu_untied", "silu_tied"])  # both activations, both heads
def test_greedy_generation_matches_transformers(checkpoints, batch, variant):
    hf_model, _, ours, _ = checkpoints[variant]
    tokens, mask, _ = batch
    with torch.no_grad():
        ref = hf_model.generate(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)),
                                do_sample=False, num_beams=1, max_new_tokens=10, min_new_tokens=10).numpy()
    ours_tokens = greedy(ours, tokens, mask, 10)
    np.testing.assert_array_equal(ours_tokens, ref)
    assert len({tuple(row) for row in ref.tolist()}) > 1  # what is generated depends on the input


def test_export_reloads_in_transformers(checkpoints, batch, tmp_path):
    hf_model, src, ours, _ = checkpoints["silu_untied"]
    tokens, mask, decoder_inputs = batch
    cfg, flat, _ = hf_checkpoint.import_hf(src)
    hf_checkpoint.export_hf(cfg, flat, str(tmp_path), src)
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    assert reloaded.lm_head.weight.data_ptr() != reloaded.shared.weight.data_ptr()
    _, ref_logits = hf_forward(hf_model, tokens, mask, decoder_inputs)
    _, logits = hf_forward(reloaded, tokens, mask, decoder_inputs)
    np.testing.assert_array_equal(logits, ref_logits)
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok.convert_tokens_to_ids(["[NLU]", *SENTINELS]) == build_hf_tokenizer().convert_tokens_to_ids(["[NLU]", *SENTINELS])


def test_export_of_tied_model_reloads_in_transformers(checkpoints, batch, tmp_path):
    hf_model, src, _, _ = checkpoints["silu_tied"]
    tokens, mask, decoder_inputs = batch
    cfg, flat, _ = hf_checkpoint.import_hf(src)
    hf_checkpoint.export_hf(cfg, flat, str(tmp_path), src)
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    np.testing.assert_array_equal(hf_forward(reloaded, tokens, mask, decoder_inputs)[1],
                                  hf_forward(hf_model, tokens, mask, decoder_inputs)[1])


def test_tokenizer_ids_match_transformers(checkpoints):
    _, path, _, ours = checkpoints["gelu_untied"]
    hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    seq = "MKVLAYWCDEFGHINPQRSTXBZUO"
    assert ours.encode(seq).tolist() == hf_tok(list(seq), is_split_into_words=True, add_special_tokens=False).input_ids
    assert [ours.task_id(t) for t in ("[NLU]", "[S2S]")] == hf_tok.convert_tokens_to_ids(["[NLU]", "[S2S]"])
    assert ours.sentinel_ids.tolist() == hf_tok.convert_tokens_to_ids(SENTINELS) == [34, 33, 32, 31, 30]
    assert (ours.pad_id, ours.eos_id, ours.unk_id) == (hf_tok.pad_token_id, hf_tok.eos_token_id, hf_tok.unk_token_id)
    assert len(ours) == VOCAB and len(hf_tok) == 35  # ours padded to the embedding size


def test_sentencepiece_tokenizer_matches_transformers(tmp_path):
    """spiece.model + extra_ids: HF appends <extra_id_0> at the very top."""
    pb = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    proto.trainer_spec.pad_id, proto.trainer_spec.eos_id, proto.trainer_spec.unk_id, proto.trainer_spec.bos_id = 0, 1, 2, -1
    proto.normalizer_spec.name = "identity"
    kinds = pb.ModelProto.SentencePiece
    pieces = [("<pad>", kinds.CONTROL), ("</s>", kinds.CONTROL), ("<unk>", kinds.UNKNOWN)]
    pieces += [("\u2581" + c, kinds.NORMAL) for c in RESIDUES] + [("[NLU]", kinds.USER_DEFINED), ("[S2S]", kinds.USER_DEFINED)]
    for piece, kind in pieces:
        entry = proto.pieces.add()
        entry.piece, entry.type, entry.score = piece, kind, -1.0
    (tmp_path / "spiece.model").write_bytes(proto.SerializeToString())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 5}))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    ours = Tokenizer.from_hf_dir(str(tmp_path))
    seq = "MKVLAYWC"
    assert ours.encode(seq).tolist() == hf_tok(list(seq), is_split_into_words=True, add_special_tokens=False).input_ids
    assert ours.sentinel_ids.tolist() == hf_tok.convert_tokens_to_ids(SENTINELS) == [34, 33, 32, 31, 30]
    assert ours.task_id("[S2S]") == hf_tok.convert_tokens_to_ids("[S2S]")


def test_default_tokenizer_export_loads_in_transformers(tmp_path):
    """A model trained with our default vocabulary exports a tokenizer.json HF reads with the same ids."""
    ours = Tokenizer.default(64)
    hf_checkpoint.write_tokenizer_json(ours, str(tmp_path))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    seq = "MKVLAYWC"
    assert hf_tok("[NLU]" + seq).input_ids == [ours.task_id("[NLU]"), *ours.encode(seq).tolist(), ours.eos_id]
    assert hf_tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_1>"]) == ours.sentinel_ids[:2].tolist()
    assert Tokenizer.from_hf_dir(str(tmp_path)).pieces == ours.pieces
