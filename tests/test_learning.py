"""The learning proof: on synthetic sequences of known entropy rate, the tiny model's held-out completion
loss comes within 5% of that rate, far below the unigram entropy. Objectives, pipeline, model, optimizer
and train loop together; ~1 minute on a quiet 2-core CPU, ~3 on a loaded one."""
import io

import numpy as np
import pytest
from flax import nnx

from ankh3 import train
from ankh3.data import pipeline
from ankh3.data.frequencies import unigram_entropy
from ankh3.data.synthetic import SyntheticSource, protein_like_hmm
from ankh3.model import T5, get_shape
from ankh3.objectives import Completion, Mixture
from ankh3.optimizer import OptimizerSpec, make_optimizer
from ankh3.tokenizer import Tokenizer

RESIDUES, BATCH, STEPS = 64, 32, 150  # each synthetic sequence: 32 residues to the encoder, 32 to complete


def optimal_completion_loss(hmm, batches, tokenizer):
    """The Bayes-optimal loss on these batches: -mean log p(tail residue | everything before it)."""
    sequences = []
    for batch in batches:
        for inputs, targets in zip(batch["encoder_tokens"], batch["decoder_targets"]):
            text = tokenizer.decode(np.r_[inputs[1:list(inputs).index(tokenizer.eos_id)],
                                          targets[:list(targets).index(tokenizer.eos_id)]])
            sequences.append([hmm.alphabet.index(c) for c in text])
    log_probs = hmm.conditional_log_probs(np.array(sequences))
    return float(-log_probs[:, RESIDUES // 2:].mean())


def test_completion_loss_approaches_the_entropy_rate_of_synthetic_sequences():
    hmm = protein_like_hmm()
    rate, unigram = hmm.entropy_rate(), hmm.unigram_entropy()
    cfg = get_shape("tiny")
    tokenizer = Tokenizer.default(cfg.vocab_size)
    mixture = Mixture(((Completion(0.5), 1.0),))
    shapes = dict(batch_size=BATCH, encoder_length=RESIDUES // 2 + 2, decoder_length=RESIDUES // 2 + 1,
                  max_residues=RESIDUES, min_residues=RESIDUES)
    training = SyntheticSource(hmm, 100_000, RESIDUES, RESIDUES, seed=0)
    batches = pipeline.make_iterator(training, tokenizer, mixture, seed=0, **shapes)
    held_out = pipeline.make_iterator(SyntheticSource(hmm, 1_000, RESIDUES, RESIDUES, seed=1), tokenizer, mixture,
                                      seed=1, shuffle=False, **shapes)
    eval_batches = [next(held_out) for _ in range(4)]
    floor = unigram_entropy(training, tokenizer, max_records=2_000)
    assert floor == pytest.approx(unigram, abs=0.02)

    model = T5(cfg, rngs=nnx.Rngs(0))
    tx, _ = make_optimizer(OptimizerSpec(learning_rate=1e-2, warmup_steps=20, total_steps=STEPS))
    graphdef, state = train.init_state(model, tx)
    settings = train.LoopSettings(steps=STEPS, log_every=50, eval_every=STEPS, checkpoint_every=STEPS,
                                  progress_every_s=0.0, unigram_floor=floor)
    out = io.StringIO()
    result = train.train_loop(
        state=state, train_step=train.make_train_step(graphdef, tx, 1, False), eval_step=train.make_eval_step(graphdef, 1),
        batches=batches, eval_batches=[train.device_batch(b, None) for b in eval_batches], task_names=("s2s",),
        settings=settings, out=out)

    loss = result.metrics["eval/s2s/residue_loss"]
    optimum = optimal_completion_loss(hmm, eval_batches, tokenizer)
    print(f"synthetic: completion loss {loss:.4f}, optimum on these batches {optimum:.4f}, entropy rate {rate:.4f}, "
          f"unigram {unigram:.4f}")
    assert optimum == pytest.approx(rate, abs=0.05)  # the held-out batches are typical
    assert optimum - 0.02 < loss < 1.05 * rate  # near the rate, and no better than possible (sampling slack)
    assert loss < unigram - 0.3  # the model learned far more than residue frequencies
    assert result.metrics["eval/s2s/loss_minus_unigram"] == pytest.approx(loss - floor)
    assert "eval per residue - unigram" in out.getvalue()
