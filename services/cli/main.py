"""`promptopt`: the command-line client over gRPC.

promptopt run opro --iterations 3 --fidelity 20     start a run and watch it
promptopt watch RUN_ID | list | get RUN_ID | cancel RUN_ID
promptopt results RUN_ID                              write results/<run>.json and .png
promptopt evaluate "Let's think step by step." --fidelity 20
promptopt run lipo-e --config best_config.yaml        algorithm fields from a YAML/JSON file
promptopt run lipo-e --instructions I.json --exemplar-sets E.json   local files, uploaded as content
promptopt artifacts list | put KIND FILE | get ID -o FILE | delete ID
promptopt tune --quick | --phases vae,gp | --grid DIR | --corpus FILE | --resume RUN_ID | --workers N
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import yaml
from google.protobuf.json_format import MessageToDict
from promptopt.operations.v1 import operations_pb2
from promptopt.optimizer.v1 import optimizer_pb2
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.cli import artifacts, flow, neuro
from services.cli.results import write_results
from services.common.artifact_client import ArtifactClient
from services.common.config import ClientConfig
from services.common.errors import NotFoundError
from services.common.plotting import tuning_phases_png
from services.common.settings import Setting
from services.common.types import Usage
from services.llm_eval.client import Chunking, LlmEvalClient, MeteredLlm
from services.llm_eval.types import DecodingParams, EvaluationRequest
from services.optimizer.client import OptimizerClient
from services.optimizer.types import algorithm_spec, algorithm_specs
from services.tuner.client import TunerClient

console = Console()
UPLOAD = "upload_"  # argparse dest prefix of a file flag: upload_<setting> holds the local path


def algorithm_flags() -> dict[str, dict[str, Setting]]:
    """Each registered optimiser -> its settings that StartRunRequest carries (the fields of its
    config message), with their declarations: a setting declared beside its algorithm gets its
    flag, help and default here."""
    messages = optimizer_pb2.StartRunRequest.DESCRIPTOR.fields_by_name
    return {
        name: {
            field: declared
            for field, declared in spec.settings.declared().items()
            if field in messages[name].message_type.fields_by_name
        }
        for name, spec in algorithm_specs().items()
        if name in messages
    }


ALGORITHM_FLAGS = algorithm_flags()


def add_setting_flags(parser: argparse.ArgumentParser, settings: dict[str, Setting]) -> None:
    """One flag per setting, with its help, bounds and default, grouped by the setting's group."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, declared in settings.items():
        group = declared.group or "algorithm settings"
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        flag = "--" + name.replace("_", "-")
        if declared.artifact:  # a local file the CLI uploads, or the id of an earlier upload
            stem = name.removesuffix("_artifact")
            groups[group].add_argument(
                "--" + stem.replace("_", "-"),
                dest=UPLOAD + name,
                metavar="FILE",
                help=f"a local file, uploaded to the optimizer as {declared.artifact} ({name})",
            )
        if isinstance(declared.default, tuple):  # repeated: --initial-prompt A --initial-prompt B
            groups[group].add_argument(
                flag.removesuffix("s"), dest=name, action="append", metavar="TEXT", help=declared.describe()
            )
        elif isinstance(declared.default, bool):
            groups[group].add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=declared.describe()
            )
        else:
            kind = type(declared.default)
            metavar = "|".join(declared.choices) if declared.choices else kind.__name__.upper()
            groups[group].add_argument(flag, type=kind, default=None, metavar=metavar, help=declared.describe())


def _client_config(address: str, args) -> ClientConfig:
    mtls = {"tls_cert": os.environ.get("PROMPTOPT_TLS_CERT", ""), "tls_key": os.environ.get("PROMPTOPT_TLS_KEY", "")}
    return ClientConfig(
        address,
        tls_ca=args.tls_ca,
        auth_token=os.environ.get("PROMPTOPT_AUTH_TOKEN", ""),
        retry_seconds=args.retry_seconds,
        **(mtls if args.tls_ca else {}),
    )


def _usage_text(usage) -> str:
    return (
        f"LLM calls {usage.llm_calls}, tokens {usage.prompt_tokens + usage.completion_tokens} "
        f"({usage.prompt_tokens} prompt + {usage.completion_tokens} completion), cache hits {usage.cache_hits}"
    )


def start_request(args, upload: Callable[[str, str], str] | None = None) -> optimizer_pb2.StartRunRequest:
    """The StartRunRequest of `promptopt run`'s flags; the local files they name go through
    `upload(kind, path) -> artifact id` (to the optimizer's ArtifactService)."""
    request = optimizer_pb2.StartRunRequest(display_name=args.name, meta_model=args.meta_model)
    ev = request.evaluation
    ev.dataset, ev.split, ev.fidelity, ev.seed, ev.max_tokens = (
        args.dataset,
        args.split,
        args.fidelity,
        args.seed,
        args.max_tokens,
    )
    ev.test_split, ev.test_fidelity = args.test_split, args.test_fidelity
    algorithm = args.algorithm.replace("-", "_")
    config = getattr(request, algorithm)
    config.SetInParent()
    if args.config:
        apply_config_file(config, algorithm, args.config)
    for flag in ALGORITHM_FLAGS[algorithm]:
        set_field(config, flag, getattr(args, flag))
    if args.algorithm == "lipo":  # the seed's run flags
        if args.skip_hbbops:
            config.mode = "skip-hbbops"
        if args.hyperband_only:
            config.mode = "hyperband-only"
        if args.load_grid:
            config.mode, args.upload_grid_artifact = "load-grid", args.load_grid
        if args.ape_instructions is not None:
            config.ape_num_instructions = args.ape_instructions
    if algorithm == "lipo_e":  # the seed's --instructions FILE; grid mode with --exemplar-sets
        if args.upload_instructions_artifact and not args.upload_exemplar_sets_artifact:
            config.use_ape = False  # the seed's --no-use-ape --instructions FILE
        if args.upload_exemplar_sets_artifact:
            config.mode = "grid"
    for name, declared in ALGORITHM_FLAGS[algorithm].items():
        path = getattr(args, UPLOAD + name, None) if declared.artifact else None
        if path:
            if upload is None:
                raise ValueError(
                    f"--{name.removesuffix('_artifact').replace('_', '-')} needs the optimizer to upload to"
                )
            setattr(config, name, upload(declared.artifact, path))
    return request


def set_field(config, name: str, value) -> None:
    """Set a config message's field (a repeated one is replaced by the list); None leaves it as it is."""
    if value is None:
        return
    if isinstance(value, list | tuple):
        config.ClearField(name)
        getattr(config, name).extend(value)
    else:
        setattr(config, name, value)


def apply_config_file(config, algorithm: str, path: str) -> None:
    """Set the algorithm's fields from a YAML or JSON file: {algorithm: {field: value}} (as the
    tuner's best_config.yaml) or {field: value}; flags given beside it win."""
    try:
        document = yaml.safe_load(open(path).read())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"--config {path}: {exc}") from exc
    if isinstance(document, dict) and isinstance(document.get(algorithm), dict):
        document = document[algorithm]
    if not isinstance(document, dict):
        raise ValueError(f"--config {path}: expected a mapping of {algorithm} fields")
    fields = {name: type(declared.default) for name, declared in ALGORITHM_FLAGS[algorithm].items()}
    for name, value in document.items():
        if name not in fields:
            raise ValueError(f"--config {path}: {algorithm} has no field {name!r}")
        if fields[name] is bool and not isinstance(value, bool):
            raise ValueError(f"--config {path}: {algorithm}.{name} must be true or false, got {value!r}")
        if fields[name] is tuple and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ValueError(f"--config {path}: {algorithm}.{name} must be a list of strings, got {value!r}")
        try:
            set_field(config, name, value if fields[name] in (bool, tuple) else fields[name](value))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"--config {path}: {algorithm}.{name}: {exc}") from exc


def watch(client: OptimizerClient | TunerClient, run_id: str, after: int = 0):
    """Stream events with a progress bar; returns every event seen."""
    events = []
    run = client.get(run_id)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("best {task.fields[best]:.3f} | LLM calls {task.fields[calls]} | cache hits {task.fields[hits]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(
            run_id, total=run.total_steps or None, completed=run.step, best=run.best_score, calls=0, hits=0
        )
        questions = None
        for event in client.watch(run_id, after):
            events.append(event)
            kind = event.WhichOneof("event")
            for t in progress.task_ids:
                progress.update(t, calls=event.usage.llm_calls, hits=event.usage.cache_hits)
            if kind == "progress":
                p = event.progress
                if p.questions_total:  # inside one long evaluation: a second bar, questions done / total
                    if questions is None:
                        fields = next(t.fields for t in progress.tasks if t.id == task)
                        questions = progress.add_task("  evaluating", total=p.questions_total, **fields)
                    progress.update(questions, total=p.questions_total, completed=p.questions_done)
                    if p.questions_done >= p.questions_total:
                        progress.remove_task(questions)
                        questions = None
                    continue
                if p.total_steps:  # a finished step: the winner's validation score
                    progress.update(task, total=p.total_steps, completed=p.step, best=p.best_score)
                progress.console.log(p.message)
            elif kind == "candidate":
                c = event.candidate
                kind_text = "" if c.comparable else " screening"
                progress.console.log(
                    f"[cyan]score {c.score:.3f}[/] (n={c.num_evaluated}{kind_text}) step {c.step}:\n{c.prompt}"
                )
            elif kind == "error":
                progress.console.log(f"[red]{event.error.message}")
    return events


def cmd_run(args) -> int:
    with OptimizerClient(_client_config(args.optimizer, args)) as client:
        with ArtifactClient(_client_config(args.optimizer, args)) as artifacts:
            run = client.start(start_request(args, artifacts.upload))
        console.print(f"started [bold]{run.run_id}[/] ({run.algorithm}, {run.total_steps} steps)")
        if args.no_watch:
            print(run.run_id)
            return 0
        return _finish(client, run.run_id, watch(client, run.run_id), args.results_dir)


def _finish(client, run_id, events, results_dir) -> int:
    run = client.get(run_id)
    state = operations_pb2.RunState.Name(run.state)
    console.print(f"\n[bold]{run_id}[/] {state}")
    if len(events) < run.last_sequence:  # watched from the middle: fetch the whole history
        events = list(client.watch(run_id, 0))
    results = [e.result for e in events if e.WhichOneof("event") == "result"]
    if results and results[-1].HasField("held_out"):
        h = results[-1].held_out
        console.print(
            f"winner: validation accuracy {h.validation_score:.3f} on {h.validation_questions} {h.validation_split}"
            f" questions; [bold]held-out accuracy {h.test_score:.3f}[/] on {h.test_questions} {h.test_split}"
            f" questions:\n{h.prompt}"
        )
    else:
        console.print(f"best prompt (validation accuracy {run.best_score:.3f}):\n{run.best_prompt}")
    if run.state == operations_pb2.RUN_STATE_FAILED:
        console.print(f"[red]failed[/]: {run.error}\nresume it with: promptopt resume {run_id}")
    console.print(_usage_text(run.usage))
    json_path, png_path = write_results(run, events, results_dir)
    console.print(f"results: {json_path}  plot: {png_path}")
    return 0 if run.state == operations_pb2.RUN_STATE_SUCCEEDED else 1


def tune_settings(args, upload) -> dict:
    """`promptopt tune` flags as the tuner's StartRun settings (only those given); `upload(kind,
    path) -> artifact id` sends the local grid and corpus to the tuner."""
    settings = {"quick": True} if args.quick else {}
    for name in ("phases", "workers", "trials_per_phase", "study_prefix", "seed", "resume_run"):
        value = getattr(args, name)
        if value not in (None, ""):
            settings[name] = value
    if args.grid:
        grid = Path(args.grid)
        for kind, file in (("instructions", "instructions.json"), ("exemplar_sets", "exemplar_sets.json")):
            settings[f"{kind}_artifact"] = upload(kind, grid / file)
        settings["grid_artifact"] = upload("grid", grid / "grid.jsonl")
    if args.corpus:
        settings["corpus_artifact"] = upload("instructions", args.corpus)
    return settings


def write_tuning(run_id: str, report: dict, results_dir: str) -> Path:
    """A tuning's best_config.yaml (`run lipo-e --config` loads it), tuning_report.md and its plot
    written to `results_dir/run_id/`; that directory."""
    out = Path(results_dir) / run_id
    out.mkdir(parents=True, exist_ok=True)
    (out / "best_config.yaml").write_text(yaml.safe_dump(report["best_config"], sort_keys=True))
    (out / "tuning_report.md").write_text(report["tuning_report"])
    (out / "tuning_report.png").write_bytes(tuning_phases_png(report["phase_results"]))
    return out


def cmd_tune(args) -> int:
    config = _client_config(args.tuner, args)
    with TunerClient(config) as client, ArtifactClient(config) as artifacts:
        settings = tune_settings(args, artifacts.upload)
        request = client.pb2.StartRunRequest(config_json=json.dumps(settings), display_name=args.name)
        run = client.start(request)
        console.print(f"started tuning run [bold]{run.run_id}[/] ({run.total_steps - 1} phases, then the report)")
        if args.no_watch:
            print(run.run_id)
            return 0
        events = watch(client, run.run_id)
        run = client.get(run.run_id)
        console.print(f"\n[bold]{run.run_id}[/] {operations_pb2.RunState.Name(run.state)}")
        results = [e.result for e in events if e.WhichOneof("event") == "result"]
        if results:
            report = json.loads(results[-1].report_json)
            table = Table("phase", "objective", "best", "gate")
            for phase, r in report["phase_results"].items():
                gate = "passed" if r["gate_passed"] else "MISSED: " + "; ".join(r["gate_failures"])
                table.add_row(phase, r["objective"], f"{r['best_value']:.4f}", gate)
            console.print(table)
            out = write_tuning(run.run_id, report, args.results_dir)
            console.print(f"report: {out / 'tuning_report.md'}  best config: {out / 'best_config.yaml'}")
        if run.state == operations_pb2.RUN_STATE_FAILED:
            console.print(f"[red]failed[/]: {run.error}")
        return 0 if run.state == operations_pb2.RUN_STATE_SUCCEEDED else 1


def cmd_watch(args) -> int:
    with OptimizerClient(_client_config(args.optimizer, args)) as client:
        return _finish(client, args.run_id, watch(client, args.run_id, args.after), args.results_dir)


def cmd_resume(args) -> int:
    with OptimizerClient(_client_config(args.optimizer, args)) as client:
        run = client.resume(args.run_id)
        console.print(f"resumed [bold]{run.run_id}[/] at step {run.step}/{run.total_steps}")
        return _finish(client, run.run_id, watch(client, run.run_id, run.last_sequence - 1), args.results_dir)


def cmd_results(args) -> int:
    with OptimizerClient(_client_config(args.optimizer, args)) as client:
        return _finish(client, args.run_id, list(client.watch(args.run_id, 0)), args.results_dir)


def cmd_list(args) -> int:
    with OptimizerClient(_client_config(args.optimizer, args)) as client:
        table = Table("run", "algorithm", "state", "step", "best", "LLM calls", "cache hits")
        for run in client.list(args.limit).runs:
            table.add_row(
                run.run_id,
                run.algorithm,
                operations_pb2.RunState.Name(run.state).removeprefix("RUN_STATE_"),
                f"{run.step}/{run.total_steps}",
                f"{run.best_score:.3f}",
                str(run.usage.llm_calls),
                str(run.usage.cache_hits),
            )
        console.print(table)
    return 0


def cmd_get(args) -> int:
    with OptimizerClient(_client_config(args.optimizer, args)) as client:
        print(json.dumps(MessageToDict(client.get(args.run_id), preserving_proto_field_name=True), indent=2))
    return 0


def cmd_cancel(args) -> int:
    with OptimizerClient(_client_config(args.optimizer, args)) as client:
        run = client.cancel(args.run_id)
        console.print(f"cancel requested for {run.run_id}; it stops after the current evaluation")
    return 0


def cmd_evaluate(args) -> int:
    with LlmEvalClient(_client_config(args.llm_eval, args)) as client:
        request = EvaluationRequest(
            instruction=args.instruction,
            dataset=args.dataset,
            split=args.split,
            fidelity=args.fidelity,
            shuffle_seed=args.seed,
            params=DecodingParams(max_tokens=args.max_tokens),
        )
        with Progress(
            TextColumn(f"evaluating on {args.split}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("evaluate", total=args.fidelity or None)
            llm = MeteredLlm(  # chunked: a long evaluation shows questions done and retries little
                client,
                Usage(),
                chunking=Chunking(),
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
            result = llm.evaluate(request)
    console.print(f"accuracy {result.accuracy:.3f} ({result.num_correct}/{result.num_evaluated}) on {result.model}")
    console.print(_usage_text(result.usage))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptopt", description="Prompt optimisation over gRPC services.")
    parser.add_argument("--optimizer", default=os.environ.get("PROMPTOPT_OPTIMIZER_ADDRESS", "127.0.0.1:50055"))
    parser.add_argument("--llm-eval", default=os.environ.get("PROMPTOPT_LLM_EVAL_ADDRESS", "127.0.0.1:50053"))
    parser.add_argument("--tuner", default=os.environ.get("PROMPTOPT_TUNER_ADDRESS", "127.0.0.1:50056"))
    for service, port in (("surrogate", 50054), ("decoder", 50052), ("encoder", 50051)):  # flow, neuro commands
        variable = f"PROMPTOPT_{service.upper()}_ADDRESS"
        parser.add_argument(f"--{service}", default=os.environ.get(variable, f"127.0.0.1:{port}"))
    parser.add_argument(
        "--tls-ca",
        default=os.environ.get("PROMPTOPT_TLS_CA", ""),
        help="CA bundle for TLS (mTLS: PROMPTOPT_TLS_CERT/KEY)",
    )
    parser.add_argument("--results-dir", default="results")
    parser.add_argument(
        "--retry-seconds",
        type=float,
        default=30.0,
        help="keep retrying an unreachable or overloaded optimizer this long (0: fail at once)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def evaluation_flags(p, split):
        p.add_argument("--dataset", default="gsm8k", help="dataset llm_eval scores on (default: 'gsm8k')")
        p.add_argument(
            "--split",
            default=split,
            help=f"validation split candidates are selected on, or a slice (default: {split!r})",
        )
        p.add_argument(
            "--fidelity", type=int, default=0, help="questions per evaluation (0: the algorithm's) (default: 0)"
        )
        p.add_argument("--seed", type=int, default=0, help="seed of the question shuffle and the search (default: 0)")
        p.add_argument(
            "--max-tokens", type=int, default=0, help="task answer length in tokens (0: the service's) (default: 0)"
        )

    run = sub.add_parser("run", help="start a run and watch it")
    algos = run.add_subparsers(dest="algorithm", required=True)
    for algorithm, flags in ALGORITHM_FLAGS.items():
        summary = algorithm_spec(algorithm).summary
        p = algos.add_parser(algorithm.replace("_", "-"), help=summary, description=summary)
        # LIPO-E's exemplar pool is train[:6154]: it validates on the seed's other 1319 train questions.
        evaluation_flags(p, "train[6154:]" if algorithm == "lipo_e" else "train")
        p.add_argument(
            "--test-split", default="test", help="held-out split the winner is reported on (default: 'test')"
        )
        p.add_argument(
            "--test-fidelity", type=int, default=0, help="held-out questions (0: the whole split) (default: 0)"
        )
        p.add_argument(
            "--meta-model", default="", help="meta-LLM served by llm_eval ('': its meta model) (default: '')"
        )
        add_setting_flags(p, flags)
        if algorithm == "lipo":
            p.add_argument("--skip-hbbops", action="store_true", help="mode skip-hbbops (with --hyperband-evals FILE)")
            p.add_argument("--hyperband-only", action="store_true", help="mode hyperband-only (no InvBO)")
            p.add_argument("--load-grid", metavar="JSONL", help="mode load-grid: top-K of this file, then InvBO")
            p.add_argument("--ape-instructions", type=int, help="APE pool size (ape_num_instructions)")
        p.add_argument(
            "--config", metavar="YAML", help="algorithm fields from a file (e.g. the tuner's best_config.yaml)"
        )
        p.add_argument("--name", default="", help="the run's display name (default: '')")
        p.add_argument("--no-watch", action="store_true", help="print the run id and return (default: watch)")
        p.set_defaults(func=cmd_run)
    p = sub.add_parser("tune", help="BOLT coordinate-descent tuning of LIPO-E (seed 004) on the tuner")
    p.add_argument("--quick", action="store_true", help="5 trials per phase, CPU-sized trials")
    p.add_argument("--phases", help="comma-separated subset of vae,scorer,gp,inference")
    p.add_argument("--workers", type=int, help="trial worker processes (default: one per GPU, else 1)")
    p.add_argument("--trials-per-phase", type=int, help="trials per phase (default 5 quick, 50 full)")
    p.add_argument(
        "--grid",
        metavar="DIR",
        help="a local recorded grid (instructions.json, exemplar_sets.json, "
        "grid.jsonl), uploaded to the tuner (default: the shipped hbbops_dev)",
    )
    p.add_argument(
        "--corpus",
        metavar="FILE",
        help="a local JSON list of instructions for the VAE phase, uploaded (default: the shipped APE pool)",
    )
    p.add_argument("--study-prefix", help="the Optuna studies' prefix, PREFIX-<phase> (default: the run id)")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", dest="resume_run", metavar="RUN_ID", help="continue that earlier tuning run's phases")
    p.add_argument("--name", default="", help="display name")
    p.add_argument("--no-watch", action="store_true", help="print the run id and return")
    p.set_defaults(func=cmd_tune)
    for name, func, help_text in (
        ("watch", cmd_watch, "stream a run's progress"),
        ("get", cmd_get, "print a run as JSON"),
        ("cancel", cmd_cancel, "cancel a run"),
        ("resume", cmd_resume, "restart a failed or cancelled run from its last checkpoint and watch it"),
        ("results", cmd_results, "write a run's results JSON and plot"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("run_id")
        if name == "watch":
            p.add_argument("--after", type=int, default=0, help="resume after this event sequence")
        p.set_defaults(func=func)
    artifacts.add_commands(sub, _client_config)
    flow.add_commands(sub, _client_config)
    neuro.add_commands(sub, _client_config)
    p = sub.add_parser("list", help="list runs")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("evaluate", help="score one instruction")
    p.add_argument("instruction")
    evaluation_flags(p, "test")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except grpc.RpcError as exc:
        console.print(f"[red]error[/]: {exc.code().name}: {exc.details()}")
        return 2
    except (ValueError, NotFoundError) as exc:
        console.print(f"[red]error[/]: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
