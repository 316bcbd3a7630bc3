"""Hugging Face GPT-Neo and Llama: configs and state dicts, both ways.

Pure functions over configs and `{name: tensor}` dicts; reading and writing
model folders builds on them. Our fused projections are split for HF
(`attn.qkv` -> q_proj, k_proj, v_proj; SwiGLU's `mlp.fc` -> gate_proj, up_proj)
and concatenated back on import. RoPE already uses HF Llama's rotate-half
layout, so no weight is permuted. `transformers` is imported only where an HF
config object is built.

Folders: `read_hf_folder` takes a folder as `save_pretrained` writes it, old or
new: `model.safetensors` or `pytorch_model.bin` (read with `weights_only`),
sharded or not; the released TinyStories GPT-Neo checkpoints carry old
attention-mask buffers (`attn.bias`, `masked_bias`, ignored), 2,048 positions,
no `lm_head.weight` (tied) and run-length `attention_types`. `write_hf_folder`
writes safetensors, `config.json`, `generation_config.json` and the tokenizer
files that `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained` read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tinystories.data.llama2c_tokenizer import is_sentencepiece_json
from tinystories.data.tokenizer import Tokenizer
from tinystories.errors import UserError
from tinystories.io import atomic_save, atomic_write_text
from tinystories.model import ModelConfig

StateDict = dict[str, torch.Tensor]

# Buffers that older transformers versions saved into checkpoints; they carry no weights.
_IGNORED_SUFFIXES = (".attn.attention.bias", ".attn.attention.masked_bias", ".rotary_emb.inv_freq")


def _get(hf_config: Any, key: str, default: Any = None) -> Any:
    """Read a field from an HF config object or from its dict (config.json)."""
    if isinstance(hf_config, dict):
        return hf_config.get(key, default)
    return getattr(hf_config, key, default)


def _require(ok: bool, family: str, what: str) -> None:
    if not ok:
        raise UserError(f"this model cannot be expressed as HF {family}: {what}")


def _take(sd: StateDict, key: str, used: set[str]) -> torch.Tensor:
    if key not in sd:
        raise UserError(f"checkpoint lacks weight {key!r}")
    used.add(key)
    return sd[key]


def _check_all_used(sd: StateDict, used: set[str]) -> None:
    left = sorted(k for k in sd if k not in used and not k.endswith(_IGNORED_SUFFIXES))
    if left:
        more = f" (and {len(left) - 5} more)" if len(left) > 5 else ""
        raise UserError(f"checkpoint has weights this configuration does not use: {', '.join(left[:5])}{more}")


Rename = tuple[str, tuple[str, ...], tuple[int, ...]]
"""One of our weights, the HF weights it is cut into along dim 0 (in order), and their sizes (none when one)."""


def _to_hf(sd: StateDict, names: list[Rename], tied: bool) -> StateDict:
    """Our state dict renamed (fused weights cut) as `names` says; lm_head.weight is the embedding when tied."""
    used: set[str] = set()
    out: StateDict = {}
    for ours, theirs, sizes in names:
        w = _take(sd, ours, used)
        out |= dict(zip(theirs, torch.split(w, list(sizes)))) if sizes else {theirs[0]: w}
    embedding = names[0][1][0]
    out["lm_head.weight"] = out[embedding] if tied else _take(sd, "lm_head.weight", used)
    _check_all_used(sd, used)
    return out


def _from_hf(sd: StateDict, names: list[Rename], tied: bool) -> StateDict:
    """An HF state dict renamed back (cut weights joined) as `names` says; a tied lm_head.weight is dropped."""
    used: set[str] = set()
    out: StateDict = {}
    for ours, theirs, _ in names:
        parts = [_take(sd, name, used) for name in theirs]
        out[ours] = torch.cat(parts) if len(parts) > 1 else parts[0]
    if tied:
        used.add("lm_head.weight")
    else:
        out["lm_head.weight"] = _take(sd, "lm_head.weight", used)
    _check_all_used(sd, used)
    return out


# --- GPT-Neo -------------------------------------------------------------------

_NEO_FIELDS = (
    ("vocab_size", "vocab_size", None), ("max_position_embeddings", "max_seq_len", None),
    ("hidden_size", "d_model", None), ("num_layers", "n_layer", None), ("num_heads", "n_head", None),
    ("intermediate_size", "d_ff", None), ("layer_norm_epsilon", "norm_eps", 1e-5),
    ("initializer_range", "init_std", 0.02), ("tie_word_embeddings", "tie_embeddings", True),
)
"""(GPTNeoConfig key, our ModelConfig field, default when config.json lacks it) of the fields read one to one."""


def neo_attention_types(windows: tuple[int | None, ...], n_layer: int) -> list:
    """GPT-Neo's run-length `attention_types` for per-layer windows (None = global)."""
    kinds = ["global" if (not windows or w is None) else "local" for w in (windows or (None,) * n_layer)]
    if n_layer % 2 == 0 and kinds == ["global", "local"] * (n_layer // 2):
        return [[["global", "local"], n_layer // 2]]  # how the released checkpoints write it
    return [[kinds, 1]]


def neo_config_to_hf(cfg: ModelConfig, eot_id: int | None = None) -> Any:
    """A `transformers.GPTNeoConfig` for cfg; UserError when a switch has no GPT-Neo equivalent.

    eot_id becomes bos/eos; by default GPT-2's 50256 when the vocabulary has it, else none.
    """
    from transformers import GPTNeoConfig

    family = "GPT-Neo"
    _require(cfg.norm == "layer", family, "norm must be 'layer'")
    _require(cfg.pos == "learned", family, "pos must be 'learned'")
    _require(cfg.mlp == "gelu_tanh", family, "mlp must be 'gelu_tanh'")
    _require(cfg.attn_scale == "none", family, "attn_scale must be 'none'")
    _require(cfg.kv_heads == cfg.n_head, family, "n_kv_head must equal n_head")
    _require(not cfg.qkv_bias and cfg.attn_out_bias and cfg.mlp_bias, family,
             "biases must be: qkv_bias off, attn_out_bias and mlp_bias on")
    local = {w for w in cfg.windows if w is not None}
    if eot_id is None and cfg.vocab_size > 50256:
        eot_id = 50256
    _require(len(local) <= 1, family, f"all local layers must share one window, got {sorted(local)}")
    # A d_ff of None means 4 * hidden_size in GPT-Neo too, as the released configs say.
    return GPTNeoConfig(
        **{theirs: getattr(cfg, ours) for theirs, ours, _ in _NEO_FIELDS},
        attention_types=neo_attention_types(cfg.windows, cfg.n_layer),
        window_size=local.pop() if local else 256,
        activation_function="gelu_new",
        resid_dropout=cfg.dropout,
        embed_dropout=cfg.dropout,
        attention_dropout=cfg.dropout,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
    )


def neo_config_from_hf(hf_config: Any) -> ModelConfig:
    """Our `ModelConfig` for a GPTNeoConfig (object or config.json dict). Dropout is set to 0."""
    act = _get(hf_config, "activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UserError(f"GPT-Neo activation {act!r} is not supported (only gelu_new, the tanh approximation)")
    n_layer = _get(hf_config, "num_layers")
    kinds = [kind for group, repeat in _get(hf_config, "attention_types") for _ in range(repeat) for kind in group]
    if len(kinds) != n_layer:
        raise UserError(f"GPT-Neo attention_types give {len(kinds)} layers, num_layers is {n_layer}")
    window = _get(hf_config, "window_size", 256)
    return ModelConfig(
        **{ours: _get(hf_config, theirs, default) for theirs, ours, default in _NEO_FIELDS},
        norm="layer",
        pos="learned",
        mlp="gelu_tanh",
        attn_scale="none",
        windows=tuple(window if kind == "local" else None for kind in kinds),
        qkv_bias=False,
        attn_out_bias=True,
        mlp_bias=True,
    )


def _neo_names(cfg: ModelConfig) -> list[Rename]:
    q, kv = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    names: list[Rename] = [("tok_emb.weight", ("transformer.wte.weight",), ()),
                           ("pos_emb.weight", ("transformer.wpe.weight",), ())]
    for layer in range(cfg.n_layer):
        ours, theirs = f"blocks.{layer}.", f"transformer.h.{layer}."
        attn = theirs + "attn.attention."
        names += [
            (ours + "ln1.weight", (theirs + "ln_1.weight",), ()),
            (ours + "ln1.bias", (theirs + "ln_1.bias",), ()),
            (ours + "attn.qkv.weight", tuple(attn + f"{p}_proj.weight" for p in "qkv"), (q, kv, kv)),
            (ours + "attn.out.weight", (attn + "out_proj.weight",), ()),
            (ours + "attn.out.bias", (attn + "out_proj.bias",), ()),
            (ours + "ln2.weight", (theirs + "ln_2.weight",), ()),
            (ours + "ln2.bias", (theirs + "ln_2.bias",), ()),
            (ours + "mlp.fc.weight", (theirs + "mlp.c_fc.weight",), ()),
            (ours + "mlp.fc.bias", (theirs + "mlp.c_fc.bias",), ()),
            (ours + "mlp.proj.weight", (theirs + "mlp.c_proj.weight",), ()),
            (ours + "mlp.proj.bias", (theirs + "mlp.c_proj.bias",), ()),
        ]
    return [*names, ("ln_final.weight", ("transformer.ln_f.weight",), ()),
            ("ln_final.bias", ("transformer.ln_f.bias",), ())]


def neo_state_dict_to_hf(sd: StateDict, cfg: ModelConfig) -> StateDict:
    """Our GPT state dict -> GPTNeoForCausalLM's (lm_head.weight included, shared when tied)."""
    return _to_hf(sd, _neo_names(cfg), cfg.tie_embeddings)


def neo_state_dict_from_hf(sd: StateDict, cfg: ModelConfig) -> StateDict:
    """GPTNeoForCausalLM's state dict -> ours (a tied lm_head.weight is dropped)."""
    return _from_hf(sd, _neo_names(cfg), cfg.tie_embeddings)


# --- Llama ---------------------------------------------------------------------

_LLAMA_FIELDS = (
    ("vocab_size", "vocab_size", None), ("max_position_embeddings", "max_seq_len", None),
    ("hidden_size", "d_model", None), ("num_hidden_layers", "n_layer", None),
    ("num_attention_heads", "n_head", None), ("rms_norm_eps", "norm_eps", 1e-6),
    ("initializer_range", "init_std", 0.02),
)
"""(LlamaConfig key, our ModelConfig field, default when config.json lacks it) of the fields read one to one."""


def llama_config_to_hf(cfg: ModelConfig, bos_id: int | None = 1, eos_id: int | None = 2) -> Any:
    """A `transformers.LlamaConfig` for cfg; UserError when a switch has no Llama equivalent.

    bos/eos default to llama2.c's sentencepiece ids (1 and 2).
    """
    from transformers import LlamaConfig

    family = "Llama"
    _require(cfg.norm == "rms", family, "norm must be 'rms'")
    _require(cfg.pos == "rope", family, "pos must be 'rope'")
    _require(cfg.mlp == "swiglu", family, "mlp must be 'swiglu'")
    _require(cfg.attn_scale == "sqrt", family, "attn_scale must be 'sqrt'")
    _require(all(w is None for w in cfg.windows), family, "all layers must be global (no windows)")
    _require(cfg.qkv_bias == cfg.attn_out_bias, family, "qkv_bias and attn_out_bias must be equal")
    return LlamaConfig(  # type: ignore[call-arg]  # rope_theta: transformers 4 takes it, 5 keeps it in kwargs
        **{theirs: getattr(cfg, ours) for theirs, ours, _ in _LLAMA_FIELDS},
        intermediate_size=cfg.ff_dim,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        rope_theta=cfg.rope_theta,
        attention_bias=cfg.qkv_bias,
        mlp_bias=cfg.mlp_bias,
        attention_dropout=cfg.dropout,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )


def _llama_rope_theta(hf_config: Any) -> float:
    # transformers >= 5 keeps RoPE settings in rope_parameters; older versions in rope_theta / rope_scaling.
    params = _get(hf_config, "rope_parameters") or {}
    scaling = _get(hf_config, "rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise UserError(f"Llama RoPE type {kind!r} is not supported (only plain RoPE)")
    return float(params.get("rope_theta") or _get(hf_config, "rope_theta", 10000.0))


def llama_config_from_hf(hf_config: Any) -> ModelConfig:
    """Our `ModelConfig` for a LlamaConfig (object or config.json dict). Dropout is set to 0."""
    act = _get(hf_config, "hidden_act", "silu")
    if act != "silu":
        raise UserError(f"Llama activation {act!r} is not supported (only silu)")
    d_model, n_head = _get(hf_config, "hidden_size"), _get(hf_config, "num_attention_heads")
    head_dim = _get(hf_config, "head_dim") or d_model // n_head
    if head_dim * n_head != d_model:
        raise UserError(f"Llama head_dim {head_dim} x {n_head} heads != hidden_size {d_model}; not supported")
    bias = bool(_get(hf_config, "attention_bias", False))
    return ModelConfig(
        **{ours: _get(hf_config, theirs, default) for theirs, ours, default in _LLAMA_FIELDS},
        n_kv_head=_get(hf_config, "num_key_value_heads") or n_head,
        d_ff=_get(hf_config, "intermediate_size"),
        norm="rms",
        pos="rope",
        rope_theta=_llama_rope_theta(hf_config),
        mlp="swiglu",
        attn_scale="sqrt",
        windows=(),
        qkv_bias=bias,
        attn_out_bias=bias,
        mlp_bias=bool(_get(hf_config, "mlp_bias", False)),
        tie_embeddings=bool(_get(hf_config, "tie_word_embeddings", False)),
    )


def _llama_names(cfg: ModelConfig) -> list[Rename]:
    q, kv, ff = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.ff_dim
    names: list[Rename] = [("tok_emb.weight", ("model.embed_tokens.weight",), ())]
    for layer in range(cfg.n_layer):
        ours, theirs = f"blocks.{layer}.", f"model.layers.{layer}."
        attn, mlp = theirs + "self_attn.", theirs + "mlp."
        names += [
            (ours + "ln1.weight", (theirs + "input_layernorm.weight",), ()),
            (ours + "attn.qkv.weight", tuple(attn + f"{p}_proj.weight" for p in "qkv"), (q, kv, kv)),
            (ours + "attn.out.weight", (attn + "o_proj.weight",), ()),
            (ours + "ln2.weight", (theirs + "post_attention_layernorm.weight",), ()),
            (ours + "mlp.fc.weight", (mlp + "gate_proj.weight", mlp + "up_proj.weight"), (ff, ff)),
            (ours + "mlp.proj.weight", (mlp + "down_proj.weight",), ()),
        ]
        if cfg.qkv_bias:
            names += [(ours + "attn.qkv.bias", tuple(attn + f"{p}_proj.bias" for p in "qkv"), (q, kv, kv)),
                      (ours + "attn.out.bias", (attn + "o_proj.bias",), ())]
        if cfg.mlp_bias:
            names += [(ours + "mlp.fc.bias", (mlp + "gate_proj.bias", mlp + "up_proj.bias"), (ff, ff)),
                      (ours + "mlp.proj.bias", (mlp + "down_proj.bias",), ())]
    return [*names, ("ln_final.weight", ("model.norm.weight",), ())]


def llama_state_dict_to_hf(sd: StateDict, cfg: ModelConfig) -> StateDict:
    """Our GPT state dict -> LlamaForCausalLM's (lm_head.weight included, shared when tied)."""
    return _to_hf(sd, _llama_names(cfg), cfg.tie_embeddings)


def llama_state_dict_from_hf(sd: StateDict, cfg: ModelConfig) -> StateDict:
    """LlamaForCausalLM's state dict -> ours (a tied lm_head.weight is dropped)."""
    return _from_hf(sd, _llama_names(cfg), cfg.tie_embeddings)


# --- model folders -------------------------------------------------------------

_FAMILIES = {
    "GPTNeoForCausalLM": "neo", "gpt_neo": "neo",
    "LlamaForCausalLM": "llama", "llama": "llama",
}


def hf_family(config_json: dict) -> str:
    """'neo' or 'llama' for an HF config.json; UserError for any other architecture."""
    archs = config_json.get("architectures") or []
    for name in [*archs, config_json.get("model_type")]:
        if name in _FAMILIES:
            return _FAMILIES[name]
    what = ", ".join(archs) or config_json.get("model_type") or "unknown"
    raise UserError(f"architecture {what} is not supported (only GPTNeoForCausalLM and LlamaForCausalLM)")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({str(e).splitlines()[0]})") from None


def _load_weight_file(path: Path) -> StateDict:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        # weights_only: a checkpoint from the internet must not run code when unpickled.
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated files, bad headers, pickles that are not plain tensors
        raise UserError(f"cannot read weights {path}: {str(e).strip().splitlines()[0] if str(e).strip() else e}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path} does not hold a plain state dict of tensors")
    return sd


def read_hf_weights(folder: Path) -> StateDict:
    """The state dict of an HF model folder: safetensors preferred, sharded files joined."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / single).is_file():
            return _load_weight_file(folder / single)
        if (folder / index).is_file():
            files = sorted(set(_read_json(folder / index).get("weight_map", {}).values()))
            sd: StateDict = {}
            for name in files:
                if not (folder / name).is_file():
                    raise UserError(f"{folder}: shard {name} named in {index} is missing")
                sd |= _load_weight_file(folder / name)
            return sd
    raise UserError(f"{folder} has no model.safetensors or pytorch_model.bin")


def read_hf_folder(folder: str | os.PathLike) -> tuple[ModelConfig, StateDict]:
    """Config and state dict (ours, float32) of a GPTNeoForCausalLM or LlamaForCausalLM folder."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} is not a Hugging Face model folder (no config.json)")
    config_json = _read_json(folder / "config.json")
    if not isinstance(config_json, dict):
        raise UserError(f"{folder / 'config.json'} is not a JSON object")
    family = hf_family(config_json)
    try:
        cfg = (neo_config_from_hf if family == "neo" else llama_config_from_hf)(config_json)
    except (TypeError, KeyError) as e:
        raise UserError(f"{folder / 'config.json'} is incomplete or malformed ({e})") from None
    theirs = {k: v.float() if v.is_floating_point() else v for k, v in read_hf_weights(folder).items()}
    sd = (neo_state_dict_from_hf if family == "neo" else llama_state_dict_from_hf)(theirs, cfg)
    return cfg, sd


def _special_tokens(tokenizer: Any) -> dict[str, tuple[str, int]]:
    """bos/eos/unk/pad token (text, id) for the HF tokenizer files; pad is our end-of-text."""
    spec = json.loads(tokenizer.to_str())
    by_text = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    vocab = spec["model"].get("vocab")
    if isinstance(vocab, dict):
        by_text = {**vocab, **by_text}
    by_id = {i: t for t, i in by_text.items()}
    if tokenizer.eot_id not in by_id:
        raise UserError("only BPE tokenizers with a named end-of-text token can be exported to Hugging Face")
    eot = (by_id[tokenizer.eot_id], tokenizer.eot_id)
    if is_sentencepiece_json(spec):
        return {"bos_token": ("<s>", by_text["<s>"]), "eos_token": ("</s>", by_text["</s>"]),
                "unk_token": ("<unk>", by_text["<unk>"]), "pad_token": eot}
    return {"bos_token": eot, "eos_token": eot, "unk_token": eot, "pad_token": eot}


def renumbered_for_pruning(tokenizer: Any) -> Any:
    """The base tokenizer of a pruned one, renumbered so that the kept tokens are ids 0..K-1 (in their order)
    and the erased ones follow (K..): a plain tokenizer.json whose ids are the pruned model's.

    The erased tokens stay in the vocabulary because the BPE merges that build kept tokens may pass
    through them. A tokenizer.json cannot erase tokens from its output, so text that the base
    vocabulary encodes with an erased token gets an id >= K, which the model does not have.
    """
    base = tokenizer.base
    kept = tokenizer.base_ids
    kept_set = set(kept)
    order = kept + [i for i in range(base.vocab_size) if i not in kept_set]
    new_id = {old: new for new, old in enumerate(order)}
    spec = json.loads(base.to_str())
    vocab = spec["model"].get("vocab")
    if spec["model"].get("type") != "BPE" or not isinstance(vocab, dict):
        raise UserError("only a pruned BPE vocabulary can be exported to Hugging Face")
    spec["model"]["vocab"] = dict(sorted(((t, new_id[i]) for t, i in vocab.items()), key=lambda kv: kv[1]))
    for added in spec.get("added_tokens", []):
        added["id"] = new_id[added["id"]]
    post = spec.get("post_processor") or {}
    for special in (post.get("special_tokens") or {}).values():
        special["ids"] = [new_id[i] for i in special.get("ids", [])]
    return Tokenizer(json.dumps(spec, ensure_ascii=False), name=f"{tokenizer.name} (pruned, renumbered)")


def write_hf_folder(folder: str | os.PathLike, cfg: ModelConfig, sd: StateDict, tokenizer: Any) -> str:
    """Write an HF model folder (model.safetensors, config.json, generation_config.json,
    tokenizer files) that `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained` load offline.

    Returns the architecture name. The end-of-text token of our tokenizer is
    where generation stops (for llama2.c models that is BOS, as in run.c).
    """
    folder = Path(folder)
    pruned = tokenizer.pruned
    if pruned:
        tokenizer = renumbered_for_pruning(tokenizer)
    special = _special_tokens(tokenizer)
    names = {k: text for k, (text, _) in special.items()}
    ids = {k: i for k, (_, i) in special.items()}
    eot = tokenizer.eot_id
    if cfg.pos == "learned":
        arch, hf_config = "GPTNeoForCausalLM", neo_config_to_hf(cfg, eot_id=eot)
        theirs = neo_state_dict_to_hf(sd, cfg)
    else:
        arch = "LlamaForCausalLM"
        hf_config = llama_config_to_hf(cfg, bos_id=ids["bos_token"], eos_id=ids["eos_token"])
        theirs = llama_state_dict_to_hf(sd, cfg)
    if cfg.tie_embeddings:
        theirs.pop("lm_head.weight")  # HF ties it again on load; safetensors refuses shared storage
    tensors = {k: v.detach().to(torch.float32).cpu().contiguous() for k, v in theirs.items()}
    hf_config.architectures = [arch]
    config = hf_config.to_dict()
    config["dtype"] = config["torch_dtype"] = "float32"  # both names: transformers 5 and 4
    if arch == "LlamaForCausalLM":
        config["rope_theta"] = cfg.rope_theta  # where transformers 4 looks for it (5: rope_parameters)
    eos = sorted({eot, ids["eos_token"]} - {None})
    generation = {"bos_token_id": ids["bos_token"], "eos_token_id": eos[0] if len(eos) == 1 else eos,
                  "pad_token_id": eot}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **names,
        "model_max_length": cfg.max_seq_len,
        "clean_up_tokenization_spaces": False,
    }
    atomic_save(folder / "model.safetensors", lambda name: save_file(tensors, name, metadata={"format": "pt"}))
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(folder / "generation_config.json", json.dumps(generation, indent=2) + "\n")
    atomic_write_text(folder / "tokenizer.json", tokenizer.to_str())
    if pruned:  # our tokenizer reads it back as the same pruned vocabulary (transformers ignores it)
        atomic_write_text(folder / "vocab_map.json", json.dumps({"base_ids": list(range(cfg.vocab_size))}) + "\n")
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(tokenizer_config, indent=2) + "\n")
    atomic_write_text(folder / "special_tokens_map.json",
                      json.dumps(names, indent=2) + "\n")
    return arch
