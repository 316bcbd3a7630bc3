"""Parameter and FLOP counts of a model, from its `ModelConfig` alone (no weights are built).

Presets, reports, the training log's MFU and the sampler's thread choice read
them here. The counts follow the parameters `GPT` creates; tests check them
against the built model, against transformers' own counts and against torch's
FLOP counter.
"""

from __future__ import annotations

from tinystories.model import ModelConfig


def _norm_params(cfg: ModelConfig) -> int:
    return cfg.d_model * (2 if cfg.norm == "layer" else 1)  # LayerNorm: weight and bias; RMSNorm: weight


def _block_params(cfg: ModelConfig) -> int:
    C, D = cfg.d_model, cfg.head_dim
    qkv_out = (cfg.n_head + 2 * cfg.kv_heads) * D
    fc_out = 2 * cfg.ff_dim if cfg.mlp == "swiglu" else cfg.ff_dim  # SwiGLU: gate and up in one matrix
    attn = C * qkv_out + (qkv_out if cfg.qkv_bias else 0) + cfg.n_head * D * C + (C if cfg.attn_out_bias else 0)
    mlp = C * fc_out + cfg.ff_dim * C + ((fc_out + C) if cfg.mlp_bias else 0)
    return 2 * _norm_params(cfg) + attn + mlp


def count_params(config: ModelConfig, non_embedding: bool = False) -> int:
    """Number of parameters of `GPT(config)` (a tied classifier counted once, as the embedding).

    non_embedding=True leaves out the token and position embeddings. An untied
    classifier (lm_head) is a matmul every token pays for, so it stays in the
    non-embedding count; a tied one is the token embedding and is left out.
    """
    n = config.n_layer * _block_params(config) + _norm_params(config)
    if not config.tie_embeddings:
        n += config.vocab_size * config.d_model  # lm_head
    if not non_embedding:
        n += config.vocab_size * config.d_model  # tok_emb
        if config.pos == "learned":
            n += config.max_seq_len * config.d_model  # pos_emb
    return n


def flops_per_token(config: ModelConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token (forward + backward) at sequence length seq_len (default max_seq_len).

    6 * N + 12 * sum over layers of (H * D * keys_l), where N counts the
    weights of every matmul (non-embedding parameters plus the classifier,
    tied or not), and keys_l is the number of keys a query attends to in
    layer l, averaged over the T positions: (T + 1) / 2 for a global causal
    layer, less for a windowed one. The 12 is 2 matmuls (q.k and p.v) x 2
    FLOPs per multiply-add x 3 (forward and the two backward matmuls).
    """
    T = seq_len or config.max_seq_len
    n = count_params(config, non_embedding=True)
    if config.tie_embeddings:
        n += config.vocab_size * config.d_model
    attn = 0.0
    for layer in range(config.n_layer):
        w = min(config.layer_window(layer) or T, T)
        # sum_{i<T} min(i + 1, w) = w(w+1)/2 + (T - w) * w
        keys = (w * (w + 1) / 2 + (T - w) * w) / T
        attn += 12 * config.n_head * config.head_dim * keys
    return 6 * n + attn

