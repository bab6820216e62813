"""Train a PHD model.  python train.py [--config=configs/default.py[:NAME]] [--config.key=value ...] [--workdir=DIR]

The default trains a small byte-level PHD-CSWA-2-16-32 on Shakespeare in a few minutes on a
CPU, then prints a sample. Rerunning with the same --workdir resumes from its latest
checkpoint. The same program as the `phd-train` console script (`phd_jax.train.cli`).
"""

if __name__ == "__main__":
    from phd_jax.cli import train_main

    train_main()
