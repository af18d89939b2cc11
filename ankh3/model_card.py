"""The README.md model card of a run exported to Hugging Face: how to use it, how it was trained, how it scored.

Everything in the card is read from the run's workdir (config.json, summary.json, pretrain_summary.json)
and from the exported tokenizer; nothing is typed in by hand.
"""
from __future__ import annotations

import json
import logging
import os

from ankh3 import names
from ankh3.tokenizer import TASK_TOKENS

log = logging.getLogger(__name__)

# What each objective type trains the model to do with its task token.
OBJECTIVE_USES = {
    "span_corruption": "embeddings (as the downstream probes use it) and denoising: residues replaced by "
                       "`<extra_id_N>` sentinels are written by the decoder",
    "completion": "completion: the encoder reads the start of a sequence, the decoder writes the rest",
}


def write_model_card(out_dir: str, run) -> str:
    """Writes OUT_DIR/README.md for `run` (an ankh3.hf_checkpoint.RunCheckpoint); returns its path."""
    path = os.path.join(out_dir, "README.md")
    with open(path, "w") as f:
        f.write(model_card(run))
    return path


def model_card(run) -> str:
    config, cfg = run.config, run.model_cfg
    name = f"{config.get('family', 'run')}/{config.get('variant', '')}-s{config.get('seed', 0)}"
    sections = [
        _front_matter(),
        f"# {name} at step {run.step:,}\n\n"
        f"A T5 protein language model ({_count(run.flat):,} parameters) pretrained with the Ankh3 ablation "
        f"platform, exported from `{run.workdir}` at step {run.step:,}. One token per residue.",
        _task_tokens(config, run.tokenizer),
        _usage(config, run.tokenizer),
        _model_table(cfg),
        _recipe(config),
        _data(config),
        _results(run.workdir, run.step),
    ]
    return "\n\n".join(s.strip() for s in sections if s) + "\n"


def _front_matter() -> str:
    return "---\nlibrary_name: transformers\npipeline_tag: text2text-generation\ntags:\n- protein\n- t5\n- ankh3\n---"


def _count(flat: dict) -> int:
    return int(sum(v.size for v in flat.values()))


def task_token_uses(config: dict, tokenizer) -> dict[str, list[str]]:
    """Task token -> what the run trained it for (its objectives), for the tokens the tokenizer has."""
    uses: dict[str, list[str]] = {}
    for entry in config.get("objectives", {}).values():
        if float(entry.get("weight", 0)) > 0 and entry.get("task_token"):
            use = OBJECTIVE_USES.get(entry.get("type"), entry.get("type", ""))
            uses.setdefault(entry["task_token"], [])
            if use not in uses[entry["task_token"]]:
                uses[entry["task_token"]].append(use)
    return {token: what for token, what in uses.items() if tokenizer.has(token)}


def _task_tokens(config: dict, tokenizer) -> str:
    uses = task_token_uses(config, tokenizer)
    lines = ["## Task tokens: prepend one to every sequence", "",
             "The model was trained with a task token before each sequence; give it the same one:", ""]
    lines += [f"- `{token}`: {'; '.join(what)}." for token, what in uses.items()]
    untrained = [t for t in TASK_TOKENS if tokenizer.has(t) and t not in uses]
    if untrained:
        lines += ["", f"The tokenizer also holds {', '.join(f'`{t}`' for t in untrained)}, not used in this run's "
                      "training (untrained embedding)."]
    prefix = config.get("downstream", {}).get("prefix")
    if prefix:
        lines += ["", f"The downstream results below embed each sequence as `{prefix}` + residues + `</s>`."]
    return "\n".join(lines)


def _usage(config: dict, tokenizer) -> str:
    uses = task_token_uses(config, tokenizer)
    embed = next((t for t, what in uses.items() if any("embeddings" in w for w in what)), "[NLU]")
    complete = next((t for t, what in uses.items() if any("completion" in w for w in what)), None)
    code = ["```python",
            "from transformers import AutoTokenizer, T5EncoderModel, AutoModelForSeq2SeqLM",
            "",
            'tokenizer = AutoTokenizer.from_pretrained("PATH")',
            'encoder = T5EncoderModel.from_pretrained("PATH")',
            f'batch = tokenizer(["{embed}MKTAYIAKQRQISFVKSHFSRQ"], return_tensors="pt")  # task token, residues, </s>',
            "embeddings = encoder(**batch).last_hidden_state  # [1, tokens, d_model]"]
    if complete:
        code += ["",
                 'model = AutoModelForSeq2SeqLM.from_pretrained("PATH")',
                 f'start = tokenizer(["{complete}MKTAYIAKQRQISFVKSHFSRQ"], return_tensors="pt")',
                 "rest = model.generate(**start, max_new_tokens=50)",
                 "print(tokenizer.decode(rest[0], skip_special_tokens=True))"]
    code.append("```")
    return "## Use\n\nPATH is this directory (or its Hub name once uploaded).\n\n" + "\n".join(code)


def _model_table(cfg) -> str:
    rows = [("d_model", cfg.d_model), ("d_ff", cfg.d_ff), ("heads x d_kv", f"{cfg.num_heads} x {cfg.d_kv}"),
            ("encoder / decoder layers", f"{cfg.num_encoder_layers} / {cfg.num_decoder_layers}"),
            ("feed-forward", f"gated {cfg.activation}"), ("vocabulary", cfg.vocab_size),
            ("relative position buckets / max distance", f"{cfg.relative_buckets} / {cfg.relative_max_distance}"),
            ("output head tied to the embedding", "yes" if cfg.tie_embeddings else "no")]
    return "## Model\n\nT5 (v1.1 layout, gated feed-forward), float32 weights.\n\n" + _table(("", ""), rows)


def _recipe(config: dict) -> str:
    rows = []
    for name, entry in config.get("objectives", {}).items():
        settings = ", ".join(f"{k} {_fmt(v)}" for k, v in entry.items() if k not in ("type", "weight", "task_token"))
        rows.append((name, entry.get("type", ""), _fmt(entry.get("weight", "")), f"`{entry.get('task_token', '')}`",
                     settings))
    opt, data, train, budget = (config.get(k, {}) for k in ("optimizer", "data", "train", "budget"))
    lines = ["## Training recipe", "",
             f"Family `{config.get('family', '')}`, variant `{config.get('variant', '')}`, seed {config.get('seed', 0)}; "
             f"objectives drawn per {config.get('mixture_granularity', 'example')}:", "",
             _table(("objective", "type", "weight", "task token", "settings"), rows), "",
             f"Optimizer {opt.get('name', '')}, learning rate {_fmt(opt.get('learning_rate', ''))} "
             f"({opt.get('schedule', '')}, {opt.get('warmup_steps', '')} warm-up steps), clip norm "
             f"{_fmt(opt.get('clip_norm', ''))}, gradient accumulation {opt.get('grad_accum', 1)}. "
             f"{train.get('steps', 0):,} steps of batch {data.get('batch_size', '')} x "
             f"({data.get('encoder_length', '')} encoder + {data.get('decoder_length', '')} decoder positions): "
             f"{budget.get('tokens_per_step', 0):,} tokens per step, {budget.get('total_tokens', 0):,} in all."]
    return "\n".join(lines)


def _data(config: dict) -> str:
    data = config.get("data", {})
    lines = ["## Data", "",
             f"- pretraining: `{data.get('train', '')}`; held out: `{data.get('valid', '')}` "
             f"(sequences shorter than {data.get('min_residues', '')} residues skipped)."]
    if config.get("init_from"):
        lines.append(f"- started from the weights in `{config['init_from']}`.")
    return "\n".join(lines)


def _results(workdir: str, step: int) -> str:
    # --mode=downstream writes its summary under downstream/; --mode=all at the top of the workdir.
    summary = _read_json(os.path.join(workdir, names.DOWNSTREAM, names.SUMMARY)) or {}
    if not summary.get("downstream"):
        summary = _read_json(os.path.join(workdir, names.SUMMARY)) or {}
    pretrain = _read_json(os.path.join(workdir, names.PRETRAIN_SUMMARY)) or summary.get("pretrain") or {}
    lines = ["## Results"]
    evals = {k: v for k, v in pretrain.items() if k.startswith("eval/") and isinstance(v, (int, float))}
    if evals:
        lines += ["", f"Held-out pretraining metrics at step {pretrain.get('step', '?')} (loss per target token; "
                      "accuracy over residue targets):", "",
                  _table(("metric", "value"), [(f"`{k}`", f"{v:.4f}") for k, v in sorted(evals.items())])]
    probes = summary.get("downstream") or []
    if not probes:
        lines += ["", "No downstream results in this workdir (no summary.json with probe results); probe it with "
                      f"`python launch/run.py --config=... --mode=downstream --workdir={workdir}`."]
        return "\n".join(lines)
    lines += ["", "Frozen-encoder probes, test split, mean ± sd over probe seeds; `onehot` and `random` are "
                  "controls (one-hot residues, a random encoder of the same shape):", "",
              _probe_table(probes)]
    measured = pretrain.get("step")
    if measured is not None and measured != step:
        lines += ["", f"These were measured at step {measured}, not at the exported step {step}."]
    return "\n".join(lines)


def _probe_table(probes: list[dict]) -> str:
    sources = list(dict.fromkeys(p["source"] for p in probes))
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for p in probes:
        for key, mean in p.get("metrics", {}).items():
            if key.startswith("test/") and key.endswith("_mean"):
                metric = key[len("test/"):-len("_mean")]
                sd = p["metrics"].get(f"test/{metric}_std", 0.0)
                cells.setdefault((p["task"], metric), {})[p["source"]] = f"{mean:.3f} ± {sd:.3f}"
    rows = [(task, metric, *(by_source.get(s, "") for s in sources)) for (task, metric), by_source in cells.items()]
    return _table(("task", "metric", *sources), rows)


def _table(header, rows) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, list):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _read_json(path: str):
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        log.warning("%s: unreadable (%s); the model card leaves out what it holds", path, e)
        return None  # a card without that table beats no export
