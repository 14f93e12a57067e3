"""`promptopt flow train | resume | validate`: EcoFlow's flow model on the surrogate's FlowService.

train: a training run (one step per epoch) watched with a progress bar; its loss curves are
written as results/<run>.{json,png} (run ids start with flow-); resume continues one from its
last epoch.
validate: samples from a checkpoint, their distance to the data manifold (nearest training
embedding, beside the held-out embeddings' own), and with --decode their texts through the
decoder with the decode round trip (decode -> re-encode cosine and L2), written as
results/flow-validate-<time>.{json,png}.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from promptopt.flow.v1 import flow_pb2
from rich.console import Console
from rich.table import Table

from services.cli import training
from services.common.artifact_client import ArtifactClient
from services.common.artifacts import ARTIFACT_ID
from services.common.config import default_pool_path
from services.common.plotting import pyplot
from services.decoder.client import DecoderClient
from services.encoder.client import EncoderClient
from services.flow.client import FlowClient
from services.flow.types import GuidanceSettings, decode_round_trip

console = Console()
TRAIN_FLAGS = (("lr", float), ("hidden_dim", int), ("num_blocks", int), ("seed", int), ("val_fraction", float))


def add_commands(sub, client_config) -> None:
    """The `flow` command group; `client_config(address, args)` builds a ClientConfig."""
    flow = sub.add_parser("flow", help="EcoFlow's flow model (seed 003) on the surrogate")
    commands = flow.add_subparsers(dest="flow_command", required=True)
    p = commands.add_parser("train", help="train a flow matching model on embeddings (a local .pt, uploaded)")
    p.add_argument(
        "--data",
        required=True,
        help="a local .pt of embeddings [n, d] (e.g. from python -m services.encoder.corpus), uploaded to the "
        "surrogate; or the id of an earlier upload",
    )
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--normalize", action="store_true", help="standardise each embedding dimension")
    for name, kind in TRAIN_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), type=kind)
    p.add_argument("--name", default="", help="display name")
    p.add_argument("--no-watch", action="store_true", help="print the run id and return")
    p.set_defaults(func=lambda args: train(args, client_config))
    p = commands.add_parser("resume", help="continue a cancelled or failed training run from its last epoch")
    p.add_argument("run_id")
    p.set_defaults(func=lambda args: resume(args, client_config))
    p = commands.add_parser("validate", help="sample a checkpoint, measure the manifold distance, decode")
    p.add_argument("--checkpoint", required=True, help="a flow training run's id (its best checkpoint is sampled)")
    p.add_argument("--n-samples", type=int, default=100)
    p.add_argument("--num-steps", type=int, default=50)
    p.add_argument("--method", choices=("heun", "euler"), default="heun")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decode", action="store_true", help="decode the samples to text (decoder) and re-encode them")
    p.add_argument("--show", type=int, default=10, help="decoded texts to print")
    p.add_argument(
        "--seed-texts",
        metavar="JSON",
        default=default_pool_path(),
        help="texts the decoder starts from (a JSON list; default: the APE instruction pool, as run ecoflow)",
    )
    p.set_defaults(func=lambda args: validate(args, client_config))


def training_settings(args, data_artifact: str) -> dict:
    settings = {"data_artifact": data_artifact, "epochs": args.epochs, "batch_size": args.batch_size}
    settings["normalize"] = args.normalize
    for name, _ in TRAIN_FLAGS:
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    return settings


def train(args, client_config) -> int:
    config = client_config(args.surrogate, args)
    data = args.data
    if not (ARTIFACT_ID.match(data) and not Path(data).exists()):  # a local file: upload its content
        with ArtifactClient(config) as artifacts:
            data = artifacts.upload("embeddings", args.data)
    with FlowClient(config) as client:
        settings = json.dumps(training_settings(args, data))
        request = flow_pb2.StartRunRequest(config_json=settings, display_name=args.name)
        return training.start(client, request, "flow", args, described, write_training)


def resume(args, client_config) -> int:
    with FlowClient(client_config(args.surrogate, args)) as client:
        return training.resume(client, args.run_id, "flow", Path(args.results_dir), described, write_training)


def described(report: dict) -> str:
    return (
        f"flow model {report['flow_run']} (its best checkpoint, validation loss {report['best_val_loss']:.4f}): "
        f"pass it as --checkpoint / --flow-checkpoint"
    )


def write_training(run_id: str, report: dict, directory: Path) -> tuple[Path, Path]:
    """results/<run>.json and a plot of the training and validation loss per epoch."""
    plt = pyplot()

    directory.mkdir(parents=True, exist_ok=True)
    json_path, png_path = directory / f"{run_id}.json", directory / f"{run_id}.png"  # run ids start flow-
    json_path.write_text(json.dumps(report, indent=2))
    epochs = [h["epoch"] for h in report["history"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [h["train_loss"] for h in report["history"]], label="training")
    ax.plot(epochs, [h["val_loss"] for h in report["history"]], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("flow matching loss")
    ax.set_title(f"flow {run_id}: {report['embeddings']} embeddings, {report['dim']}-D")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return json_path, png_path


def round_trip(decoder: DecoderClient, encoder: EncoderClient, embeddings: np.ndarray, seed_texts=()) -> dict:
    """Decode each embedding to text, re-encode the text: texts, cosine and L2 to the original."""
    decoded, usage = decoder.invert(embeddings, seed_texts)
    texts = [text for text, _ in decoded]
    cosines, distances = decode_round_trip(embeddings, np.asarray(encoder.encode(texts)))
    return {"texts": texts, "cosine": cosines.tolist(), "l2": distances.tolist(), "llm_calls": usage.llm_calls}


def validate(args, client_config) -> int:
    settings = GuidanceSettings(guidance_strength=0.0, num_steps=args.num_steps, method=args.method)
    with FlowClient(client_config(args.surrogate, args)) as client:
        started = time.monotonic()
        result = client.sample(
            args.checkpoint, args.n_samples, settings=settings, seed=args.seed, manifold_distance=True
        )
        seconds = time.monotonic() - started
    distances = result.nearest_train_l2
    document = {
        "checkpoint": args.checkpoint,
        "n_samples": args.n_samples,
        "num_steps": args.num_steps,
        "method": args.method,
        "sampling_seconds": seconds,
        "nearest_train_l2": {"mean": float(distances.mean()), "median": float(np.median(distances))},
        "heldout_nearest_l2": result.heldout_nearest_l2,
        "per_sample_nearest_train_l2": distances.tolist(),
    }
    console.print(
        f"{args.n_samples} samples in {seconds:.1f} s; L2 to the nearest training embedding: mean "
        f"{distances.mean():.4f}, median {np.median(distances):.4f} "
        f"(held-out embeddings: {result.heldout_nearest_l2:.4f})"
    )
    if args.decode:
        with (
            DecoderClient(client_config(args.decoder, args)) as decoder,
            EncoderClient(client_config(args.encoder, args)) as encoder,
        ):
            trip = round_trip(decoder, encoder, result.embeddings, seed_texts(args.seed_texts))
        document["decoded"] = trip
        table = Table("#", "decoded text", "round-trip cosine", "L2")
        for i, text in enumerate(trip["texts"][: args.show]):
            table.add_row(str(i), text, f"{trip['cosine'][i]:.3f}", f"{trip['l2'][i]:.3f}")
        console.print(table)
        cosine, l2 = np.mean(trip["cosine"]), np.mean(trip["l2"])
        console.print(f"decode round trip: mean cosine {cosine:.3f}, mean L2 {l2:.3f}")
    directory = Path(args.results_dir)
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"flow-validate-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(document, indent=2))
    plot_validation(document, stem.with_suffix(".png"))
    console.print(f"results: {stem.with_suffix('.json')}  plot: {stem.with_suffix('.png')}")
    return 0


def seed_texts(path: str) -> list[str]:
    try:
        texts = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"--seed-texts {path}: {exc}") from exc
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"--seed-texts {path}: expected a JSON list of strings")
    return texts


def plot_validation(document: dict, path: Path) -> None:
    """Histogram of the samples' distance to the manifold (held-out reference as a line), and of
    the decode round-trip cosine when decoded."""
    plt = pyplot()

    decoded = document.get("decoded")
    fig, axes = plt.subplots(1, 2 if decoded else 1, figsize=(10 if decoded else 5.5, 3.5), squeeze=False)
    ax = axes[0][0]
    ax.hist(document["per_sample_nearest_train_l2"], bins=30, color="tab:blue", alpha=0.8, label="samples")
    ax.axvline(document["heldout_nearest_l2"], color="tab:red", label="held-out embeddings (mean)")
    ax.set_xlabel("L2 to the nearest training embedding")
    ax.legend()
    if decoded:
        axes[0][1].hist(decoded["cosine"], bins=30, color="tab:green")
        axes[0][1].set_xlabel("decode -> re-encode cosine")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
