"""Grain pipeline: batch contents and shapes, crops, determinism, exact resume, drops, host shards, epochs."""
import itertools
import json

import grain
import numpy as np
import pytest
from etils import epath

from ankh3.data import pipeline
from ankh3.data.fasta import read_fasta
from ankh3.data.pipeline import PipelineError, make_iterator
from ankh3.objectives import Completion, Mixture, SpanCorruption
from ankh3.tokenizer import Tokenizer, TokenizeError

TOKENIZER = Tokenizer.default()
MIXTURE = Mixture(((Completion(0.5), 0.5), (SpanCorruption((0.15, 0.2, 0.3), 3.0), 0.5)))  # Ankh3's, spans of 3
SHORT = ("MKV", "MSTNPK", "GSHMAS")  # prefixes of real sequences, below min_residues=10


@pytest.fixture(scope="module")
def records():
    """40 real Swiss-Prot records from the repository's bundle, and three short peptides."""
    real = list(itertools.islice(read_fasta("data/pretrain/valid.fasta.xz"), 40))
    return [(r.name, r.sequence) for r in real] + [(f"short{i}", s) for i, s in enumerate(SHORT)]


@pytest.fixture(scope="module")
def fasta(records, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "small.fasta"
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in records))
    return str(path)


def settings(**overrides):
    base = dict(tokenizer=TOKENIZER, mixture=MIXTURE, batch_size=4, encoder_length=64, decoder_length=48, seed=5,
                max_residues=60, min_residues=10, on_invalid="x")
    return {**base, **overrides}


def full_length(records):
    """Lengths large enough that completion never crops any record."""
    longest = max(len(s) for _, s in records)
    return dict(encoder_length=longest + 2, decoder_length=longest + 2, max_residues=longest)


def rebuild(batch, row, mixture):
    """The residues an example was made from."""
    inputs = batch["encoder_tokens"][row].tolist()
    targets = batch["decoder_targets"][row].tolist()
    inputs, targets = inputs[1:inputs.index(TOKENIZER.eos_id)], targets[:targets.index(TOKENIZER.eos_id)]
    if isinstance(mixture.objectives[batch["task"][row]], Completion):
        return TOKENIZER.decode(inputs + targets)
    sentinels = {int(s): k for k, s in enumerate(TOKENIZER.sentinel_ids)}
    spans, out = {}, []
    for t in targets:
        if t in sentinels:
            current = spans.setdefault(sentinels[t], [])
        else:
            current.append(t)
    for t in inputs:
        out.extend(spans[sentinels[t]] if t in sentinels else [t])
    return TOKENIZER.decode(out)


def test_batches_have_the_interface_keys_shapes_and_shifted_decoder_inputs(fasta):
    mixture = MIXTURE
    batch = next(make_iterator(fasta, **settings(mixture=mixture)))
    assert set(batch) == set(pipeline.BATCH_KEYS)
    for key, dtype, shape in (("encoder_tokens", np.int32, (4, 64)), ("decoder_inputs", np.int32, (4, 48)),
                              ("decoder_targets", np.int32, (4, 48)), ("decoder_weights", np.float32, (4, 48)),
                              ("task", np.int32, (4,))):
        assert batch[key].dtype == dtype and batch[key].shape == shape, key
    np.testing.assert_array_equal(batch["decoder_inputs"][:, 1:], batch["decoder_targets"][:, :-1])
    assert (batch["decoder_inputs"][:, 0] == 0).all()
    np.testing.assert_array_equal(batch["decoder_weights"], batch["decoder_targets"] != 0)
    for row, task in enumerate(batch["task"]):
        token = mixture.objectives[task].task_token
        assert batch["encoder_tokens"][row, 0] == TOKENIZER.task_id(token)
        assert (batch["encoder_tokens"][row] == TOKENIZER.eos_id).sum() == 1


def test_every_example_is_a_window_of_a_record_cut_to_max_residues(fasta, records):
    sequences = [s for _, s in records]
    iterator = make_iterator(fasta, **settings())
    starts = []
    for batch in itertools.islice(iterator, 20):
        for row in range(4):
            window = rebuild(batch, row, MIXTURE)
            homes = [s for s in sequences if window in s]
            assert homes, "an example must be a contiguous window of some record"
            # one cut for every objective: the whole record up to 60 residues, 60 residues of a longer one
            assert len(window) == min(len(homes[0]), 60)
            starts.append(homes[0].index(window))
    assert any(starts), "random crops start inside long records"


def test_start_crop_keeps_the_start_of_each_record(fasta, records):
    sequences = [s for _, s in records]
    iterator = make_iterator(fasta, **settings(crop="start"))
    for batch in itertools.islice(iterator, 10):
        for row in range(4):
            window = rebuild(batch, row, MIXTURE)
            assert any(s.startswith(window) and len(window) == min(len(s), 60) for s in sequences)


def test_a_cut_the_objectives_do_not_fit_names_the_lengths_needed(fasta):
    with pytest.raises(PipelineError, match="max_residues=100 needs encoder_length >= 52 and decoder_length >= 51"):
        make_iterator(fasta, **settings(mixture=Mixture(((Completion(0.5), 1.0),)), max_residues=100))


def test_without_max_residues_the_cut_is_the_longest_every_objective_fits(fasta, records):
    iterator = make_iterator(fasta, **settings(mixture=Mixture(((Completion(0.5), 1.0),)), max_residues=None,
                                               crop="start"))
    longest = Completion(0.5).max_residues(64, 48, TOKENIZER.num_sentinels)  # the decoder's 47 residues: 95
    cut = max(len(rebuild(b, row, MIXTURE)) for b in itertools.islice(iterator, 10) for row in range(4))
    assert cut == longest == 95


def test_same_seed_gives_the_same_batches_and_another_seed_does_not(fasta):
    first = [b["encoder_tokens"] for b in itertools.islice(make_iterator(fasta, **settings()), 5)]
    again = [b["encoder_tokens"] for b in itertools.islice(make_iterator(fasta, **settings()), 5)]
    other = [b["encoder_tokens"] for b in itertools.islice(make_iterator(fasta, **settings(seed=6)), 5)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_restored_state_gives_exactly_the_following_batches(fasta, tmp_path):
    iterator = make_iterator(fasta, **settings())
    for _ in range(3):
        next(iterator)
    state = json.loads(json.dumps(iterator.get_state()))  # the state is plain JSON
    handler = grain.checkpoint.CheckpointHandler()  # what orbax runs for a grain iterator
    handler.save(epath.Path(tmp_path), args=grain.checkpoint.CheckpointSave(iterator))
    expected = list(itertools.islice(iterator, 12))  # crosses an epoch: 40 usable records, 4 a batch

    resumed = make_iterator(fasta, **settings())
    resumed.set_state(state)
    restored = handler.restore(epath.Path(tmp_path), args=grain.checkpoint.CheckpointRestore(
        make_iterator(fasta, **settings())))
    for other in (resumed, restored):
        for want in expected:
            got = next(other)
            assert all(np.array_equal(want[k], got[k]) for k in pipeline.BATCH_KEYS)
    assert resumed.stats == restored.stats == iterator.stats


def test_short_sequences_are_dropped_and_counted(fasta, records):
    mixture = Mixture(((Completion(0.5), 1.0),))
    iterator = make_iterator(fasta, **settings(batch_size=1, num_epochs=1, shuffle=False, mixture=mixture,
                                               **full_length(records)))
    seen = [rebuild(b, 0, mixture) for b in iterator]
    assert seen == [s for _, s in records if len(s) >= 10]
    assert iterator.stats == {"batches": 40, "examples": 40, "dropped_short": len(SHORT)}
    shuffled = make_iterator(fasta, **settings(batch_size=3, num_epochs=2))  # drops fall mid-batch too
    assert sum(len(b["task"]) for b in shuffled) == 78 and shuffled.stats["dropped_short"] == 2 * len(SHORT)


def test_processes_read_disjoint_shards_that_cover_the_source(fasta, records):
    mixture = Mixture(((Completion(0.5), 1.0),))
    shards = []
    for index in range(2):
        iterator = make_iterator(fasta, **settings(mixture=mixture, batch_size=1, num_epochs=1, min_residues=2,
                                                   process_index=index, process_count=2, **full_length(records)))
        shards.append([rebuild(b, 0, mixture) for b in iterator])
    assert sorted(shards[0] + shards[1]) == sorted(s for _, s in records)
    assert len(shards[0]) == 22 and len(shards[1]) == 21


def test_each_epoch_visits_every_record_once_in_a_new_order(fasta, records):
    mixture = Mixture(((Completion(0.5), 1.0),))
    iterator = make_iterator(fasta, **settings(mixture=mixture, batch_size=1, num_epochs=2, min_residues=2,
                                               **full_length(records)))
    seen = [rebuild(b, 0, mixture) for b in iterator]
    first, second = seen[:43], seen[43:]
    assert sorted(first) == sorted(second) == sorted(s for _, s in records)
    assert first != second and first != [s for _, s in records]


def test_batch_granularity_gives_a_whole_batch_one_task(fasta):
    mixture = Mixture(((Completion(0.5), 1.0), (SpanCorruption(0.15), 1.0)), granularity="batch")
    tasks = [b["task"] for b in itertools.islice(make_iterator(fasta, **settings(mixture=mixture)), 30)]
    assert all(len(set(t.tolist())) == 1 for t in tasks)
    assert {int(t[0]) for t in tasks} == {0, 1}


def test_invalid_residues_raise_with_the_record_name(tmp_path):
    path = tmp_path / "bad.fasta"
    path.write_text(">good\nMKTAYIAKQRQISFVKSHFSRQ\n>broken\nMKTAYIAKJRQISFVKSHFSRQ\n")
    with pytest.raises(TokenizeError, match="broken"):
        list(itertools.islice(make_iterator(str(path), **settings(on_invalid="error", batch_size=2)), 2))


@pytest.mark.parametrize("bad", [dict(crop="centre"), dict(max_residues=5), dict(seed=-1), dict(seed=2**32), dict(min_residues=1),
                                 dict(process_index=2, process_count=2), dict(batch_size=0), dict(num_epochs=0),
                                 dict(on_invalid="skip")])
def test_bad_settings_raise_pipeline_error(fasta, bad):
    with pytest.raises(PipelineError):
        make_iterator(fasta, **settings(**bad))


def test_worker_processes_need_parsed_flags(fasta):
    from absl import flags

    if flags.FLAGS.is_parsed():
        pytest.skip("absl flags already parsed in this process")
    with pytest.raises(PipelineError, match="absl"):
        make_iterator(fasta, **settings(), worker_count=2)
