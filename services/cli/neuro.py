"""`promptopt neuro train | resume | optimize | feedback | export`: the Neuro-Latent optimizer
(seed 002) on the surrogate's NeuroService.

train: a training run (phase 1 distillation epochs, then phase 2 contrastive ones) on the seed's
JSON training file, sent with the request, and the feedback stored so far, watched with a
progress bar; its loss curves are written as results/<run>.{json,png}. `--create-sample`
writes a small sample file in that format instead. resume continues a run from its last epoch.
optimize: rewrites of a prompt by the newest trained model (or --checkpoint).
feedback: stores a rating of a rewrite (and optionally a better prompt) for the next run.
export: the training file made from the platform's own records (see services.cli.neuro_export).
"""

from __future__ import annotations

import json
from pathlib import Path

from promptopt.neuro.v1 import neuro_pb2
from rich.console import Console

from services.cli import training
from services.cli.neuro_export import SAMPLE, export_training_data
from services.common.plotting import pyplot
from services.neuro.client import NeuroClient
from services.neuro.types import Feedback

console = Console()
SAMPLE_PATH = "data/neuro_training_data.json"  # the seed's --data_path default
TRAIN_FLAGS = (
    ("batch_size", int),
    ("lr", float),
    ("kl_weight", float),
    ("generation_weight", float),
    ("soft_prompt_length", int),
    ("seed", int),
    ("encoder", str),
    ("generator", str),
)


def add_commands(sub, client_config) -> None:
    """The `neuro` command group; `client_config(address, args)` builds a ClientConfig."""
    neuro = sub.add_parser("neuro", help="the Neuro-Latent prompt rewriter (seed 002) on the surrogate")
    commands = neuro.add_subparsers(dest="neuro_command", required=True)
    p = commands.add_parser("train", help="train the rewriter's black box and projector (frozen models around them)")
    p.add_argument("--data", "--data-path", dest="data", help="the seed's training JSON (distillation_pairs, triplets)")
    p.add_argument(
        "--create-sample", action="store_true", help=f"write a sample training file at --data ({SAMPLE_PATH}) and stop"
    )
    p.add_argument("--phase1-epochs", type=int, default=3, help="distillation epochs")
    p.add_argument("--phase2-epochs", type=int, default=3, help="contrastive epochs")
    for name, kind in TRAIN_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), type=kind)
    p.add_argument("--no-feedback", action="store_true", help="leave the stored feedback out of this run")
    p.add_argument(
        "--init-checkpoint", help="start from this head: a training run id (its final model) or RUN_ID/FILE.pt"
    )
    p.add_argument("--name", default="", help="display name")
    p.add_argument("--no-watch", action="store_true", help="print the run id and return")
    p.set_defaults(func=lambda args: train(args, client_config))
    p = commands.add_parser("resume", help="continue a cancelled or failed training run from its last epoch")
    p.add_argument("run_id")
    p.set_defaults(func=lambda args: resume(args, client_config))
    p = commands.add_parser("optimize", help="rewrite a prompt with the newest trained model")
    p.add_argument("raw_prompt")
    p.add_argument("--max-length", type=int, default=200, help="most new tokens per rewrite")
    p.add_argument("--num-return-sequences", type=int, default=1)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--checkpoint", default="", help="a training run id or RUN_ID/FILE.pt (default: the newest trained model)"
    )
    p.set_defaults(func=lambda args: optimize(args, client_config))
    p = commands.add_parser("feedback", help="rate a rewrite (stored for the next training run)")
    p.add_argument("raw_prompt")
    p.add_argument("optimized_prompt")
    p.add_argument("--rating", type=float, required=True, help="0 (worse than the raw prompt) to 1 (use it)")
    p.add_argument("--corrected", default="", help="a better prompt you wrote instead")
    p.add_argument("--comment", default="")
    p.set_defaults(func=lambda args: feedback(args, client_config))
    p = commands.add_parser("export", help="write a training file from the platform's records")
    p.add_argument("--output", required=True)
    p.add_argument("--runs", nargs="*", default=[], help="results JSON files of OPRO/ProTeGi runs (results/)")
    p.set_defaults(func=export)


def training_settings(args) -> dict:
    """The StartRun config: the training file's contents inline (the surrogate need not see it)."""
    data = {}
    if args.data:
        try:
            data = json.loads(Path(args.data).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"--data {args.data}: {exc}") from exc
    settings = {
        "training_data": data,
        "phase1_epochs": args.phase1_epochs,
        "phase2_epochs": args.phase2_epochs,
        "include_feedback": not args.no_feedback,
    }
    for name, _ in TRAIN_FLAGS:
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if args.init_checkpoint:
        settings["init_checkpoint"] = args.init_checkpoint
    return settings


def train(args, client_config) -> int:
    if args.create_sample:
        path = Path(args.data or SAMPLE_PATH)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(SAMPLE, indent=2))
        console.print(
            f"wrote {len(SAMPLE['distillation_pairs'])} distillation pairs and {len(SAMPLE['triplets'])} "
            f"triplets to {path}"
        )
        return 0
    with NeuroClient(client_config(args.surrogate, args)) as client:
        request = neuro_pb2.StartRunRequest(config_json=json.dumps(training_settings(args)), display_name=args.name)
        return training.start(client, request, "neuro", args, described, write_training)


def resume(args, client_config) -> int:
    with NeuroClient(client_config(args.surrogate, args)) as client:
        return training.resume(client, args.run_id, "neuro", Path(args.results_dir), described, write_training)


def described(report: dict) -> str:
    return f"final model {report['final_checkpoint']} (the surrogate now serves it)"


def write_training(run_id: str, report: dict, directory: Path) -> tuple[Path, Path]:
    """results/<run>.json and a plot of each phase's loss terms per epoch."""
    plt = pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    json_path, png_path = directory / f"{run_id}.json", directory / f"{run_id}.png"
    json_path.write_text(json.dumps(report, indent=2))
    history = report["history"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, phase, name in ((axes[0], 1, "distillation (MSE)"), (axes[1], 2, "contrastive (InfoNCE)")):
        rows = [h for h in history if h["phase"] == phase]
        epochs = [h["epoch"] for h in rows]
        ax.plot(epochs, [h["loss"] for h in rows], marker="o", label="total")
        ax.plot(epochs, [h["main_loss"] for h in rows], marker="o", label=name)
        if phase == 1 and any(h["generation_loss"] > 0 for h in rows):
            ax.plot(epochs, [h["generation_loss"] for h in rows], marker="o", label="generation")
        ax.plot(epochs, [h["kl_penalty"] for h in rows], marker="o", label="KL penalty (unweighted)")
        ax.set_yscale("log")  # the terms differ by orders of magnitude
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("epoch")
        ax.set_title(f"phase {phase}" + ("" if rows else " (no epochs)"))
        ax.legend(fontsize=7)
    fig.suptitle(
        f"Neuro-Latent {run_id}: {report['data']['distillation_pairs']} pairs, {report['data']['triplets']} triplets"
    )
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return json_path, png_path


def optimize(args, client_config) -> int:
    with NeuroClient(client_config(args.surrogate, args)) as client:
        prompts, checkpoint = client.optimize(
            args.raw_prompt, args.max_length, args.num_return_sequences, args.checkpoint, args.temperature, args.seed
        )
    print(f"written by {checkpoint}")  # plain: prompts are shown whole, brackets and all
    for i, prompt in enumerate(prompts, 1):
        print(f"{i}. {prompt}")
    return 0


def feedback(args, client_config) -> int:
    record = Feedback(args.raw_prompt, args.optimized_prompt, args.rating, args.corrected, args.comment)
    with NeuroClient(client_config(args.surrogate, args)) as client:
        feedback_id, total = client.submit_feedback(record)
    console.print(f"stored feedback {feedback_id} ({total} so far; the next training run uses it)")
    return 0


def export(args) -> int:
    data = export_training_data([Path(p) for p in args.runs])
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(data, indent=2))
    console.print(
        f"wrote {len(data['distillation_pairs'])} distillation pairs and {len(data['triplets'])} triplets "
        f"to {args.output}"
    )
    return 0
