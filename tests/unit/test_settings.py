"""One source per setting: the registry, the settings' validation and debug presets, the CLI flags
built from them, and the proto config messages held to them by a drift test."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import ClassVar

import pytest
from google.protobuf.descriptor import FieldDescriptor
from promptopt.optimizer.v1 import optimizer_pb2

from services.cli.main import ALGORITHM_FLAGS, build_parser
from services.common.settings import Settings, nested, setting
from services.optimizer.algorithms import groups, registry

PROTO = Path(__file__).resolve().parents[2] / "protos/promptopt/optimizer/v1/optimizer.proto"
KINDS = {
    int: (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64),
    float: (FieldDescriptor.TYPE_DOUBLE,),
    bool: (FieldDescriptor.TYPE_BOOL,),
    str: (FieldDescriptor.TYPE_STRING,),
    tuple: (FieldDescriptor.TYPE_STRING,),
}


def proto_defaults(message: str) -> dict[str, str]:
    """`field -> the token after 'default'` in each field's comment of `message` in the .proto."""
    block = re.search(rf"message {message} {{(.*?)\n}}", PROTO.read_text(), re.S).group(1)
    out, comment = {}, ""
    for line in block.splitlines():
        line = line.strip()
        if line.startswith("//"):
            comment += " " + line[2:]
            continue
        field = re.match(r"(?:optional |repeated )?\w+ (\w+) = \d+;", line)
        if field:
            found = re.search(r"default:? ([^\s;,]+)", comment)
            if found:
                out[field.group(1)] = found.group(1).rstrip(".").strip('"')
        comment = ""
    return out


def same_default(token: str, default) -> bool:
    if isinstance(default, bool):
        return token == str(default).lower()
    if isinstance(default, int | float):
        try:
            return float(token) == float(default)
        except ValueError:
            return False
    if isinstance(default, tuple):
        return True  # repeated fields: the comment names the value in words
    return token == default or (default == "" and token in ("the", "<state", "<none>"))


@pytest.mark.parametrize("name", sorted(registry.algorithms()))
def test_the_proto_config_matches_the_settings_names_types_and_defaults(name):
    spec = registry.spec(name)
    message = optimizer_pb2.StartRunRequest.DESCRIPTOR.fields_by_name[name].message_type
    declared = spec.settings.declared()
    retired = {f.name for f in message.fields if f.GetOptions().deprecated}  # paths, refused at StartRun
    assert set(message.fields_by_name) - retired == set(declared), "a setting and the proto differ in their fields"
    assert retired == set(spec.settings.retired), "stored runs must load with every retired field left unset"
    hints = {flat: slot.kind for flat, slot in spec.settings.layout().items()}
    defaults = proto_defaults(message.name)
    for field, setting_ in declared.items():
        proto = message.fields_by_name[field]
        kind = tuple if "tuple" in str(hints[field]) else type(setting_.default)
        assert proto.type in KINDS[kind] and proto.is_repeated == (kind is tuple), f"{name}.{field}: type differs"
        if kind is tuple:
            continue  # a repeated field's comment names its default in words
        assert field in defaults, f"{name}.{field}: its proto comment states no 'default X'"
        assert same_default(defaults[field], setting_.default), (
            f"{name}.{field}: the proto says default {defaults[field]}, the settings {setting_.default!r}"
        )


def test_the_drift_test_catches_a_changed_default(monkeypatch):
    spec = registry.spec("lipo_e")
    declared = spec.settings.declared()
    changed = {**declared, "vae_beta": dataclasses.replace(declared["vae_beta"], default=0.004)}
    monkeypatch.setattr(spec.settings, "declared", classmethod(lambda cls: changed))
    with pytest.raises(AssertionError, match="lipo_e.vae_beta: the proto says default 0.005, the settings 0.004"):
        test_the_proto_config_matches_the_settings_names_types_and_defaults("lipo_e")


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="'opro' is already registered"):
        registry.register("opro", registry.spec("opro").settings)(type("Again", (), {}))
    with pytest.raises(ValueError, match="unknown services"):
        registry.register("x", registry.spec("opro").settings, requires=("gpu",))
    with pytest.raises(ValueError, match="'nope' is not registered"):
        registry.spec("nope")


def test_every_flag_has_help_with_its_default():
    parser = build_parser()
    runs = next(a for a in parser._actions if getattr(a, "choices", None) and "run" in a.choices).choices["run"]
    algos = next(a for a in runs._actions if getattr(a, "choices", None))
    for name, flags in ALGORITHM_FLAGS.items():
        sub = algos.choices[name.replace("_", "-")]
        by_dest = {a.dest: a for a in sub._actions}
        for field, declared in flags.items():
            text = by_dest[field].help
            default = list(declared.default) if isinstance(declared.default, tuple) else declared.default
            assert "(default: " in text and repr(default) in text.replace("\n", " "), f"{name} --{field}: {text}"
            words = set(re.findall(r"[a-z]+", declared.help.lower()))
            assert words - set(field.split("_")), f"{name} --{field}: the help only repeats the flag's name"
        for action in sub._actions:  # the evaluation, file and run flags beside the settings
            if action.dest == "help":
                continue
            flag = max(action.option_strings, key=len)
            switch = action.nargs == 0 and action.default is False  # a plain switch: off unless given
            assert action.help and ("(default: " in action.help or action.default is None or switch), f"{name} {flag}"
            words = set(re.findall(r"[a-z]+", action.help.split("(default")[0].lower()))
            assert words - set(flag.strip("-").split("-")), f"{name} {flag}: the help only repeats the flag's name"


@dataclasses.dataclass(frozen=True)
class Toy(Settings):
    section: ClassVar[str] = "toy"
    count: int = setting(5, "how many", low=1, debug=2)
    rate: float = setting(0.5, "a probability", low=0.0, high=1.0)
    kind: str = setting("a", "which", choices=("a", "b"))
    debug: bool = setting(False, "small run")

    def search_steps(self) -> int:
        return self.count


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"count": 0}, "toy.count must be positive, got 0"),
        ({"rate": 1.5}, r"toy.rate must be in \[0.0, 1.0\], got 1.5"),
        ({"rate": float("nan")}, "toy.rate must be a finite number"),
        ({"kind": "c"}, r"toy.kind must be one of \['a', 'b'\], got 'c'"),
        ({"count": "5"}, "toy.count must be a int, got '5'"),
        ({"count": True}, "toy.count must be a int, got True"),
        ({"colour": "red"}, r"toy: unknown settings \['colour'\]"),
    ],
)
def test_bounds_types_and_names_are_checked_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        Toy.from_fields(fields)


def test_debug_values_fill_only_unset_fields():
    assert Toy.from_fields({"debug": True}).count == 2
    assert Toy.from_fields({"debug": True, "count": 7}).count == 7
    assert Toy.from_fields({}).count == 5
    assert Toy.from_fields({"rate": 1}).rate == 1.0 and isinstance(Toy.from_fields({"rate": 1}).rate, float)


def test_stored_configs_of_old_runs_still_load():
    """ProTeGi's runs stored `ucb_sample_size` and `ucb_rounds` before they were renamed."""
    config = registry.spec("protegi").settings.from_fields({"ucb_sample_size": 3, "ucb_rounds": 9})
    assert config.bandit_sample_size == 3
    # runs stored before files became uploads recorded the (empty) path settings
    stored = {"instructions_path": "", "exemplar_sets_path": "", "ape_cache_path": "", "iterations": 3}
    assert registry.spec("lipo_e").settings.from_fields(stored).iterations == 3
    with pytest.raises(ValueError, match="lipo.grid_path is retired: start a new run"):
        registry.spec("lipo").settings.from_fields({"mode": "load-grid", "grid_path": "/data/grid.jsonl"})
    for name, spec in registry.algorithms().items():
        if name == "ecoflow":
            continue  # needs a flow checkpoint named
        stored = spec.settings().as_fields()
        assert spec.settings.from_fields(stored) == spec.settings(), name


def test_shared_groups_are_nested_with_each_algorithms_defaults_and_no_flat_copy():
    lipo, lipo_e = registry.spec("lipo").settings(), registry.spec("lipo_e").settings()
    assert type(lipo.ape) is type(lipo_e.ape) is groups.ApePool
    assert isinstance(lipo.vae, groups.Vae) and isinstance(lipo_e.vae, groups.Vae)
    assert (lipo.ape.num_instructions, lipo_e.ape.num_instructions) == (1000, 2000)  # seeds 000 and 001
    assert (lipo.vae.epochs, lipo_e.vae.epochs, lipo.gp.epochs, lipo_e.gp.epochs) == (10000, 50000, 10000, 1000)
    assert (lipo.vae.beta, lipo_e.vae.beta, lipo.vae.lr, lipo_e.vae.lr) == (0.003, 0.005, 3e-4, 1e-3)
    assert issubclass(type(lipo.hyperband), groups.Hyperband) and type(lipo_e.hyperband) is groups.Hyperband
    for name in ("lipo", "lipo_e"):  # no group field is declared a second time as a flat copy
        settings = registry.spec(name).settings
        own = {f.name for f in dataclasses.fields(settings) if "setting" in f.metadata}
        grouped = {flat for flat, slot in settings.layout().items() if slot.group}
        assert grouped and not own & grouped and "vae_epochs" in grouped


def test_nested_groups_keep_flat_names_outside_the_code():
    """Runs store, the proto carries and the CLI takes `vae_epochs`; the code reads `config.vae.epochs`."""
    lipo_e = registry.spec("lipo_e").settings
    config = lipo_e.from_fields({"vae_epochs": 7, "product_kernel": False, "acquisition": "ucb", "ape_batch_size": 3})
    assert (config.vae.epochs, config.gp.product_kernel, config.acqf.acquisition) == (7, False, "ucb")
    assert config.ape.batch_size == 3 and config.ape.num_instructions == 2000  # the rest keep LIPO-E's defaults
    stored = config.as_fields()
    assert stored["vae_epochs"] == 7 and stored["instruction_latent_dim"] == 16 and "vae" not in stored
    assert lipo_e.from_fields(stored) == config
    with pytest.raises(ValueError, match=r"lipo_e.vae_epochs must be in \[1, 100000\], got 0"):
        lipo_e.from_fields({"vae_epochs": 0})
    with pytest.raises(ValueError, match="lipo_e.gp_lr must be a float, got 'fast'"):
        lipo_e.from_fields({"gp_lr": "fast"})
    debug = registry.spec("lipo").settings.from_fields({"debug": True, "gp_epochs": 9})
    assert (debug.ape.num_instructions, debug.vae.epochs, debug.gp.epochs, debug.acqf.num_restarts) == (10, 300, 9, 4)
    with pytest.raises(TypeError, match=r"ApePool has no settings \['size'\]"):
        nested(groups.ApePool, size=3)
    with pytest.raises(TypeError, match="lipo.gp must be a LatentGp"):
        registry.spec("lipo").settings(gp=groups.Gp())
    given = groups.LatentGp(lr=1)
    assert registry.spec("lipo").settings(gp=given).gp.lr == 1.0 and given.lr == 1  # the caller's copy is not changed


@dataclasses.dataclass(frozen=True)
class Twice(Settings):
    section: ClassVar[str] = "twice"
    vae_epochs: int = setting(5, "epochs")
    vae: groups.Vae = nested(groups.Vae)

    def search_steps(self) -> int:
        return 0


def test_a_flat_name_declared_twice_is_refused():
    with pytest.raises(TypeError, match=r"Twice: settings \['vae_epochs'\] are declared twice"):
        Twice.declared()


def test_a_config_file_sets_fields_and_the_flags_beside_it_win(tmp_path):
    from services.cli.main import start_request

    config = tmp_path / "opro.yaml"
    config.write_text("opro:\n  top_k: 7\n  initial_prompts: [From the file.]\n")
    args = build_parser().parse_args(["run", "opro", "--config", str(config), "--initial-prompt", "From the flag."])
    request = start_request(args)
    assert request.opro.top_k == 7 and list(request.opro.initial_prompts) == ["From the flag."]
    args = build_parser().parse_args(["run", "opro", "--config", str(config), "--top-k", "3"])
    assert start_request(args).opro.top_k == 3 and list(start_request(args).opro.initial_prompts) == ["From the file."]
    config.write_text("initial_prompts: Solve it.\n")
    with pytest.raises(ValueError, match=r"opro.initial_prompts must be a list of strings, got 'Solve it.'"):
        start_request(build_parser().parse_args(["run", "opro", "--config", str(config)]))


def test_the_cli_uploads_the_files_its_flags_name_and_sends_their_ids_not_paths(tmp_path):
    from services.cli.main import start_request

    uploads = []

    def upload(kind, path):
        uploads.append((kind, path))
        return f"{len(uploads):032x}"

    local = [str(tmp_path / "I.json"), str(tmp_path / "E.json")]
    args = build_parser().parse_args(["run", "lipo-e", "--instructions", local[0], "--exemplar-sets", local[1]])
    config = start_request(args, upload).lipo_e
    assert uploads == [("instructions", local[0]), ("exemplar_sets", local[1])]
    assert (config.instructions_artifact, config.exemplar_sets_artifact, config.mode) == (
        f"{1:032x}",
        f"{2:032x}",
        "grid",
    )
    assert str(tmp_path) not in str(config)  # no local path reaches the service
    args = build_parser().parse_args(["run", "lipo-e", "--instructions", local[0]])
    assert not start_request(args, upload).lipo_e.use_ape  # the seed's --no-use-ape --instructions FILE
    args = build_parser().parse_args(["run", "lipo", "--load-grid", local[1]])
    config = start_request(args, upload).lipo
    assert (config.mode, uploads[-1]) == ("load-grid", ("evaluations", local[1]))
    args = build_parser().parse_args(["run", "ecoflow", "--initial-pool", local[0], "--flow-checkpoint", "x"])
    assert start_request(args, upload).ecoflow.initial_pool_artifact == f"{len(uploads):032x}"


def test_every_number_has_an_upper_bound_and_texts_and_lists_are_capped():
    """A hostile StartRun cannot ask for a billion-wide VAE, 2^31 iterations or megabyte prompts."""
    for name, spec in registry.algorithms().items():
        for field, declared in spec.settings.declared().items():
            if isinstance(declared.default, int | float) and not isinstance(declared.default, bool):
                assert declared.high is not None or declared.choices, f"{name}.{field} has no upper bound"
    lipo = registry.spec("lipo").settings
    with pytest.raises(ValueError, match=r"lipo.eta must be in \[1.1, 100.0\], got 1.00000001"):
        lipo.from_fields({"eta": 1.00000001})  # ~4.9e8 Hyperband brackets before the bound
    assert lipo.from_fields({"eta": 1.1}).hyperband.eta == 1.1
    with pytest.raises(ValueError, match=r"lipo.vae_hidden_dim must be in \[1, 4096\], got 1000000000"):
        lipo.from_fields({"vae_hidden_dim": 10**9})
    with pytest.raises(ValueError, match=r"lipo.iterations must be in \[0, 10000\], got 2147483647"):
        lipo.from_fields({"iterations": 2**31 - 1})
    with pytest.raises(ValueError, match=r"lipo.gp_epochs must be in \[1, 100000\], got 0"):
        lipo.from_fields({"gp_epochs": 0})
    opro = registry.spec("opro").settings
    with pytest.raises(ValueError, match="opro.initial_prompts items must be at most 4096 characters"):
        opro.from_fields({"initial_prompts": ["x" * 5000]})
    with pytest.raises(ValueError, match="opro.initial_prompts must hold at most 5000 items, got 5001"):
        opro.from_fields({"initial_prompts": ["Solve it."] * 5001})
    with pytest.raises(ValueError, match="lipo.evaluations_split must be at most 4096 characters"):
        lipo.from_fields({"evaluations_split": "t" * 5000})


def test_the_tuners_ranges_lie_inside_the_settings_bounds():
    from services.tuner.hyperspace import BY_NAME

    declared = registry.spec("lipo_e").settings.declared()
    for name, param in BY_NAME.items():
        values = param.choices or (param.low, param.high)
        for value in values:
            value = int(value) if isinstance(declared[name].default, int) and not param.choices else value
            assert declared[name].problem(value) is None, f"{name}: the tuner's {value} is out of the settings' bounds"
