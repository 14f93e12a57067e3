"""A tuning's grid and corpus as uploads (issue 26: content, not paths): the grid parser, the
checks across the three grid uploads, the shipped defaults, and the settings a request may not set."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.common.artifacts import FilesystemArtifactStore
from services.tuner.inputs import INPUT_KINDS, TuningInputs, parse_grid
from services.tuner.settings import NOT_REQUEST_FIELDS, TuningSettings
from services.tuner.trials import Grid


@pytest.fixture
def store(tmp_path):
    return FilesystemArtifactStore(tmp_path / "artifacts", INPUT_KINDS)


def upload(store, datasets_dir, instructions=None, grid_rows=None) -> dict:
    root = datasets_dir / "hbbops_dev"
    instructions = instructions or json.loads((root / "instructions.json").read_text())
    rows = grid_rows or [json.loads(line) for line in (root / "grid.jsonl").read_text().splitlines()]
    return {
        "instructions_artifact": store.put("instructions", "i", json.dumps(instructions).encode()).artifact_id,
        "exemplar_sets_artifact": store.put(
            "exemplar_sets", "e", (root / "exemplar_sets.json").read_bytes()
        ).artifact_id,
        "grid_artifact": store.put("grid", "g", "\n".join(map(json.dumps, rows)).encode()).artifact_id,
    }


def settings(tmp_path, **fields) -> TuningSettings:
    return TuningSettings.from_json(json.dumps(fields), "t", tmp_path)


def test_grid_rows_are_checked_at_upload():
    assert parse_grid(b'{"instruction_id": 1, "exemplar_set_id": 0, "error_rate": 0.25, "n": 8}') == [
        {"instruction_id": 1, "exemplar_set_id": 0, "error_rate": 0.25, "n": 8}
    ]
    for bad, message in (
        (b'{"instruction_id": -1, "exemplar_set_id": 0, "error_rate": 0.2, "n": 5}', "integers >= 0"),
        (b'{"instruction_id": true, "exemplar_set_id": 0, "error_rate": 0.2, "n": 5}', "integers >= 0"),
        (
            b'{"instruction_id": 0, "exemplar_set_id": 0, "error_rate": 1.5, "n": 5}',
            r"error_rate 1.5 must lie in \[0, 1\]",
        ),
        (b'{"instruction_id": 0, "error_rate": 0.5, "n": 3}', "row 1: needs instruction_id"),
        (b'{"instruction_id": 0, "exemplar_set_id": 0, "error_rate": 0.5}', "row 1: needs"),
        (b'{"instruction_id": 0, "exemplar_set_id": 0, "error_rate": 0.5, "n": 0}', "n >= 1"),
        (b"[]", "expected JSONL rows"),
        (b"{\n", "neither JSON nor JSONL"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_grid(bad)


def test_uploaded_grid_and_corpus_equal_the_shipped_defaults_they_copy(tmp_path, store, datasets_dir):
    shipped = TuningInputs.load(settings(tmp_path), store)
    assert (len(shipped.instructions), len(shipped.exemplar_sets)) == (12, 12) and len(shipped.corpus) > 900
    corpus = store.put("instructions", "c", json.dumps(shipped.corpus[:50]).encode()).artifact_id
    uploaded = TuningInputs.load(settings(tmp_path, **upload(store, datasets_dir), corpus_artifact=corpus), store)
    assert uploaded.corpus == shipped.corpus[:50]
    vae = uploaded.for_phase("vae", 20)  # what a phase study carries: only the corpus its trials read
    assert vae["corpus"] == [t for t in shipped.corpus[:50] if t not in shipped.instructions][:20]
    assert uploaded.for_phase("gp", 20) == {**vae, "corpus": []} == {**shipped.for_phase("scorer", 5), "corpus": []}
    grid = Grid.of(TuningInputs.from_dict(json.loads(json.dumps(vae))))  # as a worker reads it
    assert grid.errors.shape == (12, 12) and not np.isnan(grid.errors).any()
    first = json.loads((datasets_dir / "hbbops_dev" / "grid.jsonl").read_text().splitlines()[0])
    assert grid.errors[first["instruction_id"], first["exemplar_set_id"]] == first["error_rate"]


def test_a_grid_that_does_not_fit_its_instructions_and_sets_is_refused(tmp_path, store, datasets_dir):
    rows = [json.loads(line) for line in (datasets_dir / "hbbops_dev" / "grid.jsonl").read_text().splitlines()]
    with pytest.raises(ValueError, match="grid_artifact covers 143 of the 12 x 12"):
        TuningInputs.load(settings(tmp_path, **upload(store, datasets_dir, grid_rows=rows[1:])), store)
    outside = [*rows, {**rows[0], "exemplar_set_id": 12}]
    with pytest.raises(ValueError, match=r"cell \(0, 12\) lies outside the 12 x 12 grid"):
        TuningInputs.load(settings(tmp_path, **upload(store, datasets_dir, grid_rows=outside)), store)
    instructions = json.loads((datasets_dir / "hbbops_dev" / "instructions.json").read_text())
    repeated = [*instructions[:11], instructions[0]]
    with pytest.raises(ValueError, match="the grid's instructions must be distinct"):
        TuningInputs.load(settings(tmp_path, **upload(store, datasets_dir, instructions=repeated)), store)
    ids = upload(store, datasets_dir)
    with pytest.raises(ValueError, match="give all three, or none"):
        TuningInputs.load(settings(tmp_path, grid_artifact=ids["grid_artifact"]), store)
    swapped = {**ids, "grid_artifact": ids["instructions_artifact"]}
    with pytest.raises(ValueError, match="grid_artifact '[0-9a-f]{32}' holds instructions, not grid"):
        TuningInputs.load(settings(tmp_path, **swapped), store)


def test_no_request_names_a_place_on_the_tuner_and_stored_runs_still_load(tmp_path):
    for name in NOT_REQUEST_FIELDS:
        with pytest.raises(ValueError, match=f"^{name} is not a request field"):
            settings(tmp_path, **{name: "/etc"})
    old = {"output_dir": "/elsewhere", "storage": "sqlite:////x.db", "grid_dir": "/g", "resume": False}
    loaded = TuningSettings.from_json(json.dumps({**old, "quick": True}), "bolt-1", tmp_path, stored=True)
    assert loaded.output_dir == str(tmp_path / "bolt-1") and loaded.storage.endswith("/bolt-1/optuna.db")
    assert loaded.quick and not loaded.resume_run
    # a stored resume of an output directory continues that tuning, now named by its run id
    old_resume = {"output_dir": str(tmp_path / "bolt-0"), "resume": True}
    assert TuningSettings.from_json(json.dumps(old_resume), "bolt-3", tmp_path, stored=True).resume_run == "bolt-0"
    assert settings(tmp_path, resume=False).resume_run == ""  # what earlier clients always sent
    resumed = settings(tmp_path, resume_run="bolt-0")
    assert resumed.output_dir == str(tmp_path / "bolt-0")  # a resume continues that run's output
    operator = TuningSettings.from_json("{}", "bolt-2", tmp_path, "postgresql://tuner@db/optuna")
    assert operator.storage == "postgresql://tuner@db/optuna"
    for bad in ("../x", "a/b", "", "x" * 65):
        if bad:
            with pytest.raises(ValueError, match="resume_run must be a tuner run id"):
                settings(tmp_path, resume_run=bad)
        with pytest.raises(ValueError, match="study_prefix must match"):
            settings(tmp_path, study_prefix=bad or " ")
