"""Loss curves of one or several training runs on one chart, labelled with the models' names
(`phd_jax.plotting.plot_metrics`; each WORKDIR holds the metrics.jsonl that training writes).

    python scripts/plot_metrics.py runs/a runs/b -o loss.png [--x step|tokens|flops] [--metric loss|val_loss]
"""

import argparse

from phd_jax.plotting import X_AXES, plot_metrics


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdirs", nargs="+", help="run directories with metrics.jsonl")
    p.add_argument("-o", "--out", default="loss.png", help="PNG to write")
    p.add_argument("--x", default="step", choices=sorted(X_AXES), help="x axis")
    p.add_argument("--metric", default="loss", help="any logged metric: loss, val_loss, val_bits_per_byte, ...")
    p.add_argument("--labels", nargs="+", help="one label per workdir (default: the model's name)")
    p.add_argument("--title", help="chart title")
    a = p.parse_args()
    try:
        plot_metrics(a.workdirs, a.out, x=a.x, metric=a.metric, labels=a.labels, title=a.title)
    except (ValueError, TypeError, FileNotFoundError) as e:
        p.error(str(e))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
