"""Per-task success of several `sop eval` runs as one table: scale.json, scale.png and a Markdown table on stdout.

Usage: python tools/scale_table.py EVAL_DIR [EVAL_DIR ...] --out DIR   (each EVAL_DIR holds an eval.json)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evals", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    for directory in args.evals:
        report = json.loads((directory / "eval.json").read_text())
        checkpoint = json.loads(Path(report["policy"]).with_suffix(".loss.json").read_text())
        # Trained on every success in its directory (no --demos-per-task): the mean per task.
        per_task = checkpoint.get("demos_per_task") or round(checkpoint["episodes"] / len(checkpoint["tasks"]), 1)
        rows.append({"demos_per_task": per_task, "episodes": checkpoint["episodes"],
                     "train_steps": checkpoint["train_steps"], "final_loss": round(checkpoint["curve"][-1]["loss"], 4),
                     "pretrain_minutes": round(checkpoint["elapsed_s"] / 60, 1),
                     "version": report["version"], "eval_episodes_per_task": report["episodes_per_task"],
                     "success": {t: v["success_rate"] for t, v in report["tasks"].items()},
                     "mean_success": report["mean_success_rate"]})  # fmt: skip
    rows.sort(key=lambda r: r["demos_per_task"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(rows, indent=2) + "\n")
    tasks = sorted({t for r in rows for t in r["success"]})
    print("| demos per task | " + " | ".join(tasks) + " | mean | pretraining |")
    print("|" + " --- |" * (len(tasks) + 3))
    for r in rows:
        cells = [f"{100 * r['success'].get(t, 0):.0f}%" for t in tasks]
        print(f"| {r['demos_per_task']} | " + " | ".join(cells) + f" | {100 * r['mean_success']:.0f}% | "
              f"{r['train_steps']} steps, {r['pretrain_minutes']} min, loss {r['final_loss']} |")
    plot(rows, tasks, args.out / "scale.png")


def plot(rows: list[dict], tasks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    demos = [r["demos_per_task"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for task in tasks:
        ax.plot(demos, [100 * r["success"].get(task, 0) for r in rows], marker="o", alpha=0.6, label=task)
    ax.plot(demos, [100 * r["mean_success"] for r in rows], marker="s", color="black", linewidth=2.5, label="mean")
    ax.set(xlabel="demonstrations per task", ylabel="success (%)", xticks=demos, ylim=(-5, 105),
           title="base policy: success vs demonstrations")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
