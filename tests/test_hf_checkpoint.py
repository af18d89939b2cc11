"""ankh3.hf_checkpoint without transformers: weight files, name mapping, orbax directories, errors, CLI.

Parity against transformers itself lives in test_hf_parity.py.
"""
import dataclasses
import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from ankh3 import hf_checkpoint
from ankh3.hf_checkpoint import ConversionError
from ankh3.model import ModelConfig, flat_params
from ankh3.provenance import portable_path
from ankh3.tokenizer import Tokenizer

CFG = ModelConfig(vocab_size=40, d_model=8, d_ff=12, num_heads=2, d_kv=4, num_encoder_layers=3,
                  num_decoder_layers=2, activation="silu", relative_buckets=8, relative_max_distance=16)


def random_flat(cfg, seed=0):
    """Random parameters of `cfg` under canonical names, built from HF shapes."""
    rng = np.random.default_rng(seed)
    tensors = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in hf_checkpoint.hf_shapes(cfg).items()}
    return hf_checkpoint.hf_to_flat(cfg, tensors)


def write_hf_dir(path, cfg=CFG, seed=0):
    flat = random_flat(cfg, seed)
    hf_checkpoint.export_hf(cfg, flat, str(path), Tokenizer.default(cfg.vocab_size))
    return flat


def edit_config(path, **changes):
    with open(path / "config.json") as f:
        hf = json.load(f)
    hf.update(changes)
    (path / "config.json").write_text(json.dumps(hf))


def assert_same_flat(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture
def hf_dir(tmp_path):
    path = tmp_path / "hf"
    return path, write_hf_dir(path)


def test_export_then_import_is_exact(hf_dir):
    path, flat = hf_dir
    cfg, imported, tok = hf_checkpoint.import_hf(str(path))
    assert cfg == CFG
    assert_same_flat(imported, flat)
    assert imported["encoder.attn.q"].shape == (3, 8, 8) and imported["lm_head"].shape == (8, 40)
    assert tok.pieces == Tokenizer.default(40).pieces


def test_linear_kernels_are_transposed_and_layers_stacked(hf_dir):
    path, flat = hf_dir
    tensors = hf_checkpoint.read_safetensors(str(path / "model.safetensors"))
    np.testing.assert_array_equal(flat["decoder.cross_attn.o"][1], tensors["decoder.block.1.layer.1.EncDecAttention.o.weight"].T)
    np.testing.assert_array_equal(flat["encoder.mlp.wo"][2], tensors["encoder.block.2.layer.1.DenseReluDense.wo.weight"].T)
    np.testing.assert_array_equal(flat["decoder.mlp_norm"][0], tensors["decoder.block.0.layer.2.layer_norm.weight"])
    np.testing.assert_array_equal(flat["encoder.relative_bias"],
                                  tensors["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"])


def test_sharded_safetensors(hf_dir):
    path, flat = hf_dir
    tensors = hf_checkpoint.read_safetensors(str(path / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        hf_checkpoint.write_safetensors(str(path / shard), {k: tensors[k] for k in keys})
    index = {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    os.remove(path / "model.safetensors")
    assert_same_flat(hf_checkpoint.import_hf(str(path))[1], flat)
    os.remove(path / "model-00002-of-00002.safetensors")
    with pytest.raises(ConversionError, match="model-00002-of-00002.safetensors.*missing"):
        hf_checkpoint.import_hf(str(path))


def test_bfloat16_weights_are_read_exactly(hf_dir):
    path, flat = hf_dir
    tensors = hf_checkpoint.read_safetensors(str(path / "model.safetensors"))
    header_free = {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}
    _write_bf16_safetensors(path / "model.safetensors", header_free)
    imported = hf_checkpoint.import_hf(str(path))[1]
    assert imported["shared"].dtype == np.float32
    np.testing.assert_array_equal(imported["shared"], flat["shared"].astype(ml_dtypes.bfloat16).astype(np.float32))


def _write_bf16_safetensors(path, tensors):
    """safetensors.numpy cannot write bfloat16; the format is a JSON header then raw bytes."""
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + b"".join(blobs))


def test_pytorch_bin(hf_dir):
    torch = pytest.importorskip("torch")
    path, flat = hf_dir
    tensors = hf_checkpoint.read_safetensors(str(path / "model.safetensors"))
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}, path / "pytorch_model.bin")
    os.remove(path / "model.safetensors")
    assert_same_flat(hf_checkpoint.import_hf(str(path))[1], flat)


def test_transformers5_untied_file_without_lm_head(hf_dir):
    # transformers 5 drops lm_head.weight when it equals shared; no output scaling means untied.
    path, flat = hf_dir
    tensors = hf_checkpoint.read_safetensors(str(path / "model.safetensors"))
    del tensors["lm_head.weight"]
    hf_checkpoint.write_safetensors(str(path / "model.safetensors"), tensors)
    edit_config(path, tie_word_embeddings=True, scale_decoder_outputs=False)
    cfg, imported, _ = hf_checkpoint.import_hf(str(path))
    assert not cfg.tie_embeddings
    np.testing.assert_array_equal(imported["lm_head"], flat["shared"].T)


def test_tied_checkpoint_has_no_head(tmp_path):
    cfg = dataclasses.replace(CFG, tie_embeddings=True, activation="gelu_new")
    flat = write_hf_dir(tmp_path, cfg)
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["feed_forward_proj"] == "gated-gelu" and hf["tie_word_embeddings"] is True
    assert "lm_head.weight" not in hf_checkpoint.read_safetensors(str(tmp_path / "model.safetensors"))
    cfg2, imported, _ = hf_checkpoint.import_hf(str(tmp_path))
    assert cfg2 == cfg and "lm_head" not in imported
    assert_same_flat(imported, flat)


def test_scaled_head_that_differs_from_embedding_is_folded(hf_dir):
    path, flat = hf_dir
    edit_config(path, tie_word_embeddings=True, scale_decoder_outputs=True)
    cfg, imported, _ = hf_checkpoint.import_hf(str(path))
    assert not cfg.tie_embeddings
    np.testing.assert_allclose(imported["lm_head"], flat["lm_head"] * 8 ** -0.5, rtol=1e-7)


def test_pretrained_dir_round_trip(hf_dir, tmp_path):
    path, flat = hf_dir
    cfg, imported, tok = hf_checkpoint.import_hf(str(path))
    out = tmp_path / "ckpt"
    hf_checkpoint.save_pretrained_dir(str(out), cfg, imported, str(path))
    cfg2, model, tok2 = hf_checkpoint.load_pretrained_dir(str(out))
    assert cfg2 == cfg
    assert_same_flat(flat_params(model), flat)
    assert tok2.pieces == tok.pieces
    assert hf_checkpoint.load_pretrained_dir(str(out), dtype="bfloat16")[0].dtype == "bfloat16"
    with pytest.raises(ConversionError, match="already holds a converted checkpoint"):
        hf_checkpoint.save_pretrained_dir(str(out), cfg, imported, str(path))


def test_cli_import_and_export(hf_dir, tmp_path, capsys):
    path, flat = hf_dir
    ckpt, back = tmp_path / "ckpt", tmp_path / "back"
    assert hf_checkpoint.main([f"--hf_dir={path}", f"--out={ckpt}"]) == 0
    assert hf_checkpoint.main(["--to_hf", f"--ckpt={ckpt}", f"--out={back}"]) == 0
    assert sorted(os.listdir(back)) == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert_same_flat(hf_checkpoint.import_hf(str(back))[1], flat)
    with pytest.raises(SystemExit) as done:
        hf_checkpoint.main(["--to_hf", f"--out={back}"])
    assert done.value.code == 2
    assert capsys.readouterr().err == "error: --to_hf needs --ckpt=DIR (a run's workdir or a directory written by an import)\n"


def test_cli_bad_dir_is_one_line_and_exit_2(tmp_path):
    run = subprocess.run([sys.executable, "-m", "ankh3.hf_checkpoint", f"--hf_dir={tmp_path}", f"--out={tmp_path}/o"],
                         capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert run.returncode == 2
    assert run.stderr.splitlines() == [f"error: {tmp_path}: no config.json; pass a HF T5 checkpoint directory"]


# ---- bad input: one ConversionError naming what is wrong ---------------------------------
def _drop_tensor(path, name):
    tensors = hf_checkpoint.read_safetensors(str(path / "model.safetensors"))
    del tensors[name]
    hf_checkpoint.write_safetensors(str(path / "model.safetensors"), tensors)


def _add_tensor(path, name):
    tensors = hf_checkpoint.read_safetensors(str(path / "model.safetensors"))
    tensors[name] = np.zeros((12, 8), np.float32)
    hf_checkpoint.write_safetensors(str(path / "model.safetensors"), tensors)


def _reshape_tensor(path, name):
    tensors = hf_checkpoint.read_safetensors(str(path / "model.safetensors"))
    tensors[name] = np.zeros((5, 8), np.float32)
    hf_checkpoint.write_safetensors(str(path / "model.safetensors"), tensors)


BAD_INPUTS = {
    "no directory": (lambda p: os.rename(p, str(p) + "_gone"), "no such directory"),
    "no config": (lambda p: os.remove(p / "config.json"), "no config.json"),
    "not t5": (lambda p: edit_config(p, model_type="bert", architectures=["BertModel"]),
               r"'bert'.*only T5ForConditionalGeneration"),
    "encoder only": (lambda p: edit_config(p, architectures=["T5EncoderModel"]), "T5EncoderModel"),
    "relu t5": (lambda p: edit_config(p, feed_forward_proj="relu"), "feed_forward_proj='relu'.*gated"),
    "no d_model": (lambda p: _del_key(p, "d_model"), "missing 'd_model'"),
    "no weights": (lambda p: os.remove(p / "model.safetensors"), "no model.safetensors.*holds no weights"),
    "missing tensor": (lambda p: _drop_tensor(p, "decoder.block.1.layer.2.DenseReluDense.wi_1.weight"),
                       r"'decoder.block.1.layer.2.DenseReluDense.wi_1.weight' is missing \(expected shape \(12, 8\)\)"),
    "mis-shaped tensor": (lambda p: _reshape_tensor(p, "encoder.block.1.layer.0.SelfAttention.k.weight"),
                          r"'encoder.block.1.layer.0.SelfAttention.k.weight' has shape \(5, 8\), config.json implies \(8, 8\)"),
    "unexpected tensor": (lambda p: _add_tensor(p, "encoder.block.0.layer.1.DenseReluDense.wi.weight"),
                          r"unexpected tensor 'encoder.block.0.layer.1.DenseReluDense.wi.weight'"),
    "tokenizer too big": (lambda p: edit_config(p, vocab_size=30) or _shrink_embeddings(p, 30),
                          "tokenizer has 40 tokens but the embedding has 30 rows"),
    "no tokenizer": (lambda p: os.remove(p / "tokenizer.json"), "tokenizer: .*no tokenizer.json or spiece.model"),
    "truncated weights": (lambda p: _truncate(p / "model.safetensors", 0.5), r"ends at byte \d+ .*the file is truncated"),
    "truncated header": (lambda p: _truncate(p / "model.safetensors", 0.01), "not a readable safetensors file"),
}


def _truncate(path, fraction):
    os.truncate(path, int(os.path.getsize(path) * fraction))


def _del_key(path, key):
    hf = json.loads((path / "config.json").read_text())
    del hf[key]
    (path / "config.json").write_text(json.dumps(hf))


def _shrink_embeddings(path, rows):
    tensors = hf_checkpoint.read_safetensors(str(path / "model.safetensors"))
    for name in ("shared.weight", "lm_head.weight"):
        tensors[name] = tensors[name][:rows]
    hf_checkpoint.write_safetensors(str(path / "model.safetensors"), tensors)


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_conversion_error(hf_dir, case):
    path, _ = hf_dir
    damage, message = BAD_INPUTS[case]
    damage(path)
    with pytest.raises(ConversionError, match=message):
        hf_checkpoint.import_hf(str(path))


def test_saved_without_tokenizer_writes_the_default_one(tmp_path, caplog):
    out = tmp_path / "ckpt"
    with caplog.at_level("WARNING", logger="ankh3.hf_checkpoint"):
        hf_checkpoint.save_pretrained_dir(str(out), CFG, random_flat(CFG))
    assert "default tokenizer of vocab_size 40" in caplog.text
    assert (out / "tokenizer.json").exists()
    assert hf_checkpoint.load_pretrained_dir(str(out))[2].pieces == Tokenizer.default(CFG.vocab_size).pieces


def test_dir_without_tokenizer_files_is_one_line_with_the_fix(tmp_path):
    out = tmp_path / "ckpt"
    hf_checkpoint.save_pretrained_dir(str(out), CFG, random_flat(CFG))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        os.remove(out / name)  # as written by versions before the default tokenizer
    with pytest.raises(ConversionError) as e:
        hf_checkpoint.load_pretrained_dir(str(out))
    assert "\n" not in str(e.value) and "no tokenizer.json or spiece.model" in str(e.value)
    assert "Tokenizer.default(40)" in str(e.value)


def test_downstream_run_from_a_dir_saved_without_tokenizer(tmp_path):
    """python launch/run.py --mode=downstream --config.init_from=DIR, end to end on a tiny probe."""
    from mlflow import MlflowClient

    ckpt = tmp_path / "ckpt"
    cfg = dataclasses.replace(CFG, vocab_size=48)  # any size: the saved tokenizer has as many ids
    hf_checkpoint.save_pretrained_dir(str(ckpt), cfg, random_flat(cfg))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    env.pop("XLA_FLAGS", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "launch/run.py", "--config=experiments/base.py", "--mode=downstream",
         f"--config.init_from={ckpt}", f"--workdir={tmp_path / 'work'}", "--config.downstream.tasks=('gb1',)",
         "--config.downstream.max_per_split=16", "--config.downstream.epochs=1",
         "--config.downstream.controls=('onehot',)"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("base").experiment_id])
    probes = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert set(probes) == {"gb1/model", "gb1/onehot"}
    assert np.isfinite(list(probes["gb1/model"].data.metrics.values())).all()
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    # a path outside the repository is logged by name and content digest, never by this machine's path
    assert parent.info.status == "FINISHED" and parent.data.params["init_from"] == portable_path(str(ckpt))


# ---- a trained run's workdir -> HF, with a model card ------------------------------------
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_STEPS = (2, 4)  # checkpoints the tiny run leaves


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run's workdir as launch/run.py leaves it: config.json, orbax checkpoints of the whole train
    state (grad_accum 2, so directories count micro-batches: 4 and 8 for steps 2 and 4), summary files.
    Steps are stood for by fresh parameters (not trained: what is tested is the layout, not the values)."""
    import jax
    from flax import nnx

    from ankh3 import train
    from ankh3.checkpoint import Checkpointer
    from ankh3.config import model_config
    from ankh3.model import T5
    from ankh3.optimizer import OptimizerSpec, make_optimizer
    from experiments.base import get_config

    workdir = tmp_path_factory.mktemp("run")
    config = get_config()
    config.model.update(d_model=16, d_ff=24, num_heads=2, d_kv=8, num_encoder_layers=2, num_decoder_layers=1)
    config.optimizer.grad_accum = 2
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=1))
    cfg = model_config(config.model)
    tx, _ = make_optimizer(OptimizerSpec.from_config(config.optimizer, config.train.steps))
    checkpointer = Checkpointer(str(workdir / "checkpoints"))
    params_at = {}
    for step in RUN_STEPS:
        model = T5(cfg, rngs=nnx.Rngs(step))
        _, state = train.init_state(model, tx)
        state["step"] = jax.numpy.int32(step * config.optimizer.grad_accum)
        checkpointer.save(step * config.optimizer.grad_accum, state, {"position": step})
        params_at[step] = flat_params(model)
    checkpointer.close()
    metrics = {"test/q3_mean": 0.5, "test/q3_std": 0.01}  # stands for a probe's result: the card only copies it
    (workdir / "pretrain_summary.json").write_text(json.dumps({"step": 4, "eval/loss": 5.1, "eval/nlu/loss": 4.9}))
    (workdir / "summary.json").write_text(json.dumps({"pretrain": {}, "downstream": [
        {"task": "ssp3", "source": "model", "metrics": metrics},
        {"task": "ssp3", "source": "onehot", "metrics": {"test/q3_mean": 0.4, "test/q3_std": 0.02}}]}))
    return workdir, cfg, params_at


def test_read_run_takes_the_latest_checkpoint_or_the_step_asked(run_dir):
    workdir, cfg, params_at = run_dir
    latest = hf_checkpoint.read_run(str(workdir))
    assert latest.step == 4 and latest.model_cfg == dataclasses.replace(cfg, dtype="float32")
    assert_same_flat(latest.flat, params_at[4])
    assert not np.array_equal(params_at[2]["shared"], params_at[4]["shared"])
    assert_same_flat(hf_checkpoint.read_run(str(workdir), step=2).flat, params_at[2])
    with pytest.raises(ConversionError, match=r"no checkpoint at step 3; it holds steps 2, 4"):
        hf_checkpoint.read_run(str(workdir), step=3)


def test_export_run_writes_weights_tokenizer_and_model_card(run_dir, tmp_path):
    workdir, cfg, params_at = run_dir
    out = tmp_path / "hf"
    hf_checkpoint.export_run(str(workdir), str(out))
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors", "tokenizer.json",
                                       "tokenizer_config.json"]
    cfg2, flat, tok = hf_checkpoint.import_hf(str(out))
    assert_same_flat(flat, params_at[4])
    assert tok.pieces == Tokenizer.default(cfg.vocab_size).pieces
    card = (out / "README.md").read_text()
    assert "# base/ankh3-s0 at step 4" in card
    assert "- `[NLU]`: embeddings" in card and "- `[S2S]`: completion" in card
    assert "| nlu | span_corruption | 0.5 | `[NLU]` |" in card and "noise_density (0.15, 0.2, 0.3)" in card
    assert "| ssp3 | q3 | 0.500 ± 0.010 | 0.400 ± 0.020 |" in card and "| `eval/loss` | 5.1000 |" in card
    assert "gradient accumulation 2" in card and "data/pretrain/train.fasta.xz" in card
    with pytest.raises(ConversionError, match="already holds an export"):
        hf_checkpoint.export_run(str(workdir), str(out))


def test_card_of_an_earlier_step_says_where_its_results_come_from(run_dir, tmp_path):
    workdir, _, _ = run_dir
    hf_checkpoint.export_run(str(workdir), str(tmp_path / "hf"), step=2)
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "at step 2" in card and "measured at step 4, not at the exported step 2" in card


def test_exported_run_loads_offline_in_transformers_and_matches_our_encoder(run_dir, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from flax import nnx

    from ankh3.model import T5, load_flat_params

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    workdir, cfg, params_at = run_dir
    out = str(tmp_path / "hf")
    assert hf_checkpoint.main(["--to_hf", f"--ckpt={workdir}", f"--out={out}"]) == 0
    tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    encoder = transformers.T5EncoderModel.from_pretrained(out, local_files_only=True).eval()
    seq2seq = transformers.AutoModelForSeq2SeqLM.from_pretrained(out, local_files_only=True).eval()
    ours_tok = Tokenizer.default(cfg.vocab_size)
    sequences = ["MKTAYIAKQRQISFVKSHFSRQ", "MSEQNNTEMTFQIQRIYTKDISFEAPNAPHVFQ"]
    batch = tokenizer(["[NLU]" + s for s in sequences], padding=True, return_tensors="pt")
    ids, mask = batch.input_ids.numpy(), batch.attention_mask.numpy().astype(bool)
    assert ids[1].tolist() == [ours_tok.task_id("[NLU]"), *ours_tok.encode(sequences[1]).tolist(), ours_tok.eos_id]
    ours = load_flat_params(T5(cfg, rngs=nnx.Rngs(0)), params_at[4])
    decoder_inputs = np.zeros((2, 3), np.int64)
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state.numpy()
        logits = seq2seq(**batch, decoder_input_ids=torch.tensor(decoder_inputs)).logits.numpy()
    ours_hidden = np.asarray(ours.encode(ids, mask))
    np.testing.assert_allclose(hidden[mask], ours_hidden[mask], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, np.asarray(ours(ids, decoder_inputs, mask)), rtol=1e-5, atol=1e-4)


def test_cli_help_names_its_flags_and_examples():
    run = subprocess.run([sys.executable, "-m", "ankh3.hf_checkpoint", "--help"], capture_output=True, text=True,
                         cwd=REPO)
    assert run.returncode == 0
    assert "--to_hf" in run.stdout and "--step" in run.stdout and "examples:" in run.stdout
    assert "--ckpt=runs/base/ankh3-s0" in run.stdout


def test_cli_bad_usage_and_bad_run_are_one_line_exit_2(run_dir, tmp_path):
    workdir, _, _ = run_dir

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "ankh3.hf_checkpoint", *args], capture_output=True, text=True,
                              cwd=REPO, timeout=120)

    cases = {
        "no --out": (cli("--to_hf"), "the following arguments are required: --out"),
        "bad --step": (cli("--to_hf", f"--ckpt={workdir}", "--step=x", f"--out={tmp_path}/a"), "invalid int value"),
        "missing step": (cli("--to_hf", f"--ckpt={workdir}", "--step=7", f"--out={tmp_path}/b"),
                         "no checkpoint at step 7"),
        "not a run": (cli("--to_hf", f"--ckpt={tmp_path}", f"--out={tmp_path}/c"), "neither a run's workdir"),
    }
    for case, (run, message) in cases.items():
        assert run.returncode == 2, case
        assert len(run.stderr.splitlines()) == 1 and run.stderr.startswith("error: ") and message in run.stderr, case
    assert not os.path.exists(f"{tmp_path}/b")  # nothing written for a failed export


def test_damaged_checkpoint_is_one_line_naming_other_steps(run_dir, tmp_path):
    import shutil

    workdir, _, _ = run_dir
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    for root, _, files in os.walk(copy / "checkpoints" / "8" / "state"):
        for name in files:
            if name != "_METADATA" and "ocdbt" not in root:
                continue
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ConversionError, match=r"checkpoints/8: cannot read the parameters .*pass --step= of another one \(2\)$"):
        hf_checkpoint.read_run(str(copy))


def test_run_started_from_published_weights_exports_their_tokenizer(hf_dir, tmp_path):
    path, _ = hf_dir
    tok, src = hf_checkpoint.run_tokenizer({"init_from": str(path)}, CFG.vocab_size)
    assert src == str(path) and tok.pieces == Tokenizer.default(CFG.vocab_size).pieces
    os.remove(path / "tokenizer.json")
    with pytest.raises(ConversionError, match="no longer holds its tokenizer"):
        hf_checkpoint.run_tokenizer({"init_from": str(path)}, CFG.vocab_size)
    tok, src = hf_checkpoint.run_tokenizer({"init_from": ""}, 64)
    assert src is tok and tok.pieces == Tokenizer.default(64).pieces
