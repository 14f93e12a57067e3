"""A trial worker: `python -m services.tuner.worker --storage URL (--study NAME | --follow PREFIX)
[--output-dir DIR]`.

It runs a phase study's trials until the phase's budget is spent, calling the model services
named by its `PROMPTOPT_TUNER_*` environment; `--follow PREFIX` works each phase study of the
tuning PREFIX in turn as the coordinator opens it. The coordinator spawns one per GPU (with
CUDA_VISIBLE_DEVICES set) or N on CPU; in Kubernetes the `tuner-workers` Indexed Job adds more
against the shared PostgreSQL storage. SIGTERM/SIGINT interrupt the running trial, which is
re-enqueued for another worker.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import logging
import os
import signal
import sys
import time
import uuid

import optuna
import sqlalchemy

from services.common.config import from_env
from services.encoder.client import EncoderClient
from services.optimizer.client import OptimizerClient
from services.surrogate.client import SurrogateClient
from services.tuner.config import PREFIX, TunerConfig
from services.tuner.hyperspace import ORDER
from services.tuner.inputs import TuningInputs
from services.tuner.settings import TuningSettings
from services.tuner.study import Worker, counts, finished, storage_for
from services.tuner.trials import TrialRunner

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


def work(storage: str, study: str, output_dir: str | None, config: TunerConfig, gpu: int | None = None) -> int:
    """Run the study's trials in this process, writing trials/ under `output_dir` (default: the
    tuning's own output directory, for a worker that shares the tuner's volume); the number run."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # each worker sees its one GPU as device 0
    loaded = optuna.load_study(study_name=study, storage=storage)
    stored = TuningSettings.from_dict(loaded.user_attrs["settings"])  # its storage URL is redacted
    settings = dataclasses.replace(stored, storage=storage)
    loaded = optuna.load_study(study_name=study, storage=storage_for(settings))  # with heartbeats and retries
    owner = f"tuner-{study}-{uuid.uuid4().hex[:12]}"  # unique across pods (each worker is PID 1 there)
    with (
        EncoderClient(config.client(config.encoder_address)) as encoder,
        SurrogateClient(config.client(config.surrogate_address)) as surrogate,
        OptimizerClient(config.client(config.optimizer_address)) as optimizer,
    ):
        inputs = TuningInputs.from_dict(loaded.user_attrs["inputs"])
        runner = TrialRunner(settings, inputs, encoder, surrogate, optimizer, owner)
        worker = Worker(loaded, runner.run, output_dir or settings.output_dir)
        worker.stop_on_signals()
        outcomes = worker.run()
    for outcome in outcomes:
        log.info("trial %d %s value %s", outcome.number, outcome.state, outcome.value)
    return len(outcomes)


def spawned(storage: str, study: str, output_dir: str, config: TunerConfig, gpu: int | None, parent: int) -> None:
    """Entry of a worker the coordinator (pid `parent`) spawned: it dies with it (Linux PDEATHSIG)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(process)d %(levelname)s %(message)s")
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: an orphan finishes its trial and stops at the budget
    if os.getppid() != parent:  # the coordinator died before the signal was armed
        return
    work(storage, study, output_dir, config, gpu)


def follow(storage: str, prefix: str, output_dir: str | None, config: TunerConfig, poll: float = 10.0) -> int:
    """Work every phase study PREFIX-<phase> in coordinate-descent order, waiting for each to be
    opened (a phase the tuning skips is passed once a later one is open); the trials run."""
    ran, shared = 0, None  # one connection pool for the polling (the trials open their own)
    for index, phase in enumerate(ORDER):
        name = f"{prefix}-{phase}"
        while True:
            try:
                shared = shared or optuna.storages.RDBStorage(storage)
                names = {s.study_name for s in optuna.get_all_study_summaries(shared)}
            except sqlalchemy.exc.DBAPIError as exc:  # the database is starting, or its tables are being made
                log.warning("storage not ready (%s); retrying in %.0f s", type(exc).__name__, poll)
                names = set()
            if name in names or any(f"{prefix}-{later}" in names for later in ORDER[index + 1 :]):
                break
            time.sleep(poll)
        if name not in names:
            continue
        study = optuna.load_study(study_name=name, storage=shared)
        while "settings" not in study.user_attrs:  # opened a moment ago: its attributes follow
            time.sleep(1)
            study = optuna.load_study(study_name=name, storage=shared)
        settings = TuningSettings.from_dict(study.user_attrs["settings"])
        if not finished(counts(study), settings.trials_per_phase):
            ran += work(storage, name, output_dir, config)
        if phase == settings.phases[-1]:
            break
    return ran


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.tuner.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="the study storage (SQLAlchemy URL)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", help="one phase study's name (PREFIX-PHASE)")
    which.add_argument("--follow", metavar="PREFIX", help="every phase study of the tuning PREFIX, in order")
    parser.add_argument("--output-dir", help="where trials/<id>/ are written (default: the tuning's output directory)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    config = from_env(TunerConfig, PREFIX)
    if not args.storage or args.storage.startswith("$("):  # Kubernetes leaves $(VAR) when the Secret is missing
        print(
            "--storage is empty: give the Optuna storage URL (Kubernetes: Secret promptopt-tuner-storage)",
            file=sys.stderr,
        )
        return 2
    try:
        if args.study:
            ran = work(args.storage, args.study, args.output_dir, config)
        else:
            ran = follow(args.storage, args.follow, args.output_dir, config)
    except KeyError as exc:
        print(f"study in {args.storage!r} was not found or not made by the tuner: {exc}", file=sys.stderr)
        return 2
    print(f"{ran} trials run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
