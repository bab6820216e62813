"""Logical axis names: the one spelling of each, for parameters and activations.

The model annotates parameters (`nn.with_logical_partitioning`) and constrains activations
(`nn.with_logical_constraint`) by these names; the run config's rules map them onto mesh
axes (`phd_jax.train.config.DEFAULT_RULES`). The bottom of the layers: imports nothing.
(MaxText keeps the same list in `common_types.py`.)
"""

# Mesh axes: data parallel, fully sharded data parallel, tensor parallel.
DATA = "data"
FSDP = "fsdp"
TENSOR = "tensor"
MESH_AXES = (DATA, FSDP, TENSOR)

# Inputs (a batch of token ids).
BATCH = "batch"

# Parameters.
EMBED = "embed"
VOCAB = "vocab"
MLP = "mlp"
HEADS = "heads"
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
LAYERS = "layers"  # the stacked layer axis of `scan_layers`

# Activations.
ACTIVATION_BATCH = "activation_batch"
ACTIVATION_LENGTH = "activation_length"
ACTIVATION_EMBED = "activation_embed"
ACTIVATION_HEADS = "activation_heads"
ACTIVATION_KV_HEADS = "activation_kv_heads"
ACTIVATION_MLP = "activation_mlp"
ACTIVATION_VOCAB = "activation_vocab"

PARAMETER_AXES = (EMBED, VOCAB, MLP, HEADS, KV_HEADS, HEAD_DIM, LAYERS)
ACTIVATION_AXES = (
    ACTIVATION_BATCH,
    ACTIVATION_LENGTH,
    ACTIVATION_EMBED,
    ACTIVATION_HEADS,
    ACTIVATION_KV_HEADS,
    ACTIVATION_MLP,
    ACTIVATION_VOCAB,
)
