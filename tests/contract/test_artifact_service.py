"""ArtifactService over a real gRPC server and files: uploads are content named by id, checked for
their kind and bounded; no request reaches a path outside the store; the CLI round-trips a file."""

from __future__ import annotations

import json
import threading

import grpc
import pytest
from promptopt.artifacts.v1 import artifacts_pb2, artifacts_pb2_grpc

from services.cli.main import main as cli
from services.common.artifact_client import ArtifactClient
from services.common.artifact_server import artifact_binding
from services.common.artifacts import ArtifactLimits, FilesystemArtifactStore, artifact_id
from services.optimizer.algorithms.inputs import INPUT_KINDS
from tests.conftest import start_server

INSTRUCTIONS = json.dumps(["Solve it step by step.", "Think, then answer."]).encode()


@pytest.fixture
def served(tmp_path):
    store = FilesystemArtifactStore(tmp_path / "state" / "artifacts", INPUT_KINDS, ArtifactLimits(1, 1, 3))
    server = start_server(artifact_binding(store))
    address = f"127.0.0.1:{server.port}"
    channel = grpc.insecure_channel(address)
    yield store, address, artifacts_pb2_grpc.ArtifactServiceStub(channel)
    channel.close()
    server.server.stop(0)


def refused(call, request):
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    return caught.value.code(), caught.value.details()


def test_an_upload_is_named_by_its_kind_and_content_and_round_trips(served, tmp_path):
    store, address, stub = served
    local = tmp_path / "client" / "mine.json"
    local.parent.mkdir()
    local.write_bytes(INSTRUCTIONS)
    with ArtifactClient(address) as client:
        first = client.upload("instructions", local)
        assert first == artifact_id("instructions", INSTRUCTIONS) == client.upload("instructions", local)
        got = client.get(first)
        assert got.content == INSTRUCTIONS and (got.artifact.kind, got.artifact.name) == ("instructions", "mine.json")
        assert [a.artifact_id for a in client.list("instructions")] == [first] and client.list("evaluations") == []
        assert store.load(first, "instructions", "f") == ["Solve it step by step.", "Think, then answer."]
        assert client.delete(first) and not client.delete(first)
    code, details = refused(stub.GetArtifact, artifacts_pb2.GetArtifactRequest(artifact_id=first))
    assert code == grpc.StatusCode.NOT_FOUND and first in details


def test_hostile_uploads_and_ids_are_refused_naming_the_field_and_touch_nothing_outside(served, tmp_path):
    store, _, stub = served
    outside = sorted(p for p in tmp_path.rglob("*") if store.root not in p.parents)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    put = artifacts_pb2.PutArtifactRequest
    for request, message in [
        (put(kind="../../etc", content=INSTRUCTIONS), "kind must be one of ['evaluations', 'exemplar_sets'"),
        (put(kind="instructions", name="n" * 201, content=INSTRUCTIONS), "name must be at most 200 characters"),
        (put(kind="instructions"), "content is empty"),
        (put(kind="instructions", content=b"x" * (1024 * 1024 + 1)), "content must be at most 1048576 bytes"),
        (put(kind="instructions", content=b"\xff\xfe"), "content is not a valid instructions artifact: not UTF-8"),
        (put(kind="evaluations", content=b'{"instruction": 1}'), "not a valid evaluations artifact"),
        (put(kind="exemplar_sets", content=b"[[1]]"), "expected a JSON list of lists of {question, answer}"),
        (put(kind="exemplar_sets", content=b'[[{"question": 1, "answer": "x"}]]'), "not a valid exemplar_sets"),
        (put(kind="instructions", content=b"[" * 100000), "not a valid instructions artifact"),  # nesting
        (put(kind="evaluations", content=b'{"instruction": "x", "accuracy": 0.5, "n": 1e999}'), "evaluations"),
        (put(kind="evaluations", content=b'{"instruction": "x", "accuracy": 2}'), "must lie in [0, 1]"),
    ]:
        assert refused(stub.PutArtifact, request)[0] == invalid
        assert message in refused(stub.PutArtifact, request)[1]
    for value in ("../../etc/passwd", "/etc/passwd", "a" * 31, "A" * 32, "0" * 31 + "\0"):
        for call, request in [
            (stub.GetArtifact, artifacts_pb2.GetArtifactRequest(artifact_id=value)),
            (stub.DeleteArtifact, artifacts_pb2.DeleteArtifactRequest(artifact_id=value)),
        ]:
            code, details = refused(call, request)
            assert code == invalid and details.startswith("artifact_id must be an artifact id"), details
    assert store.list() == []
    assert sorted(p for p in tmp_path.rglob("*") if store.root not in p.parents) == outside


def test_the_store_is_bounded_and_a_full_store_says_what_to_do(served):
    store, _, stub = served
    for n in range(3):
        store.put("instructions", "", json.dumps([f"A {n}.", f"B {n}."]).encode())
    code, details = refused(
        stub.PutArtifact, artifacts_pb2.PutArtifactRequest(kind="instructions", content=INSTRUCTIONS)
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "max_artifacts 3" in details and "delete" in details
    assert len(store.list()) == 3  # nothing stored was lost


def test_evaluations_come_as_a_results_json_a_list_or_jsonl_of_any_length():
    from services.optimizer.algorithms.inputs import parse_evaluations

    row = {"instruction": "Solve it.", "accuracy": 0.75, "n": 8}
    expected = [{"instruction": "Solve it.", "error": 0.25, "n": 8}]
    for content in (json.dumps({"results": [row]}), json.dumps([row]), json.dumps(row), json.dumps(row) + "\n"):
        assert parse_evaluations(content.encode()) == expected
    two = (json.dumps(row) + "\n" + json.dumps({**row, "instruction": "B."})).encode()
    assert [r["instruction"] for r in parse_evaluations(two)] == ["Solve it.", "B."]


def test_concurrent_identical_uploads_store_one_artifact(tmp_path):
    store = FilesystemArtifactStore(tmp_path, INPUT_KINDS)
    ids = []
    threads = [
        threading.Thread(target=lambda: ids.append(store.put("instructions", "", INSTRUCTIONS))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({i.artifact_id for i in ids}) == 1 and len(store.list()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ids[0].artifact_id, ids[0].artifact_id + ".json"])


def test_the_cli_puts_lists_gets_and_deletes(served, tmp_path, capsys, monkeypatch):
    _, address, _ = served
    monkeypatch.chdir(tmp_path)  # the CLI's own directory, which the service never sees
    (tmp_path / "pool.json").write_bytes(INSTRUCTIONS)
    base = ["--optimizer", address, "artifacts"]
    assert cli([*base, "put", "instructions", "pool.json"]) == 0
    uploaded = capsys.readouterr().out.strip()
    assert uploaded == artifact_id("instructions", INSTRUCTIONS)
    assert cli([*base, "list"]) == 0 and uploaded in capsys.readouterr().out
    assert cli([*base, "get", uploaded, "-o", "back.json"]) == 0
    assert (tmp_path / "back.json").read_bytes() == INSTRUCTIONS
    assert cli([*base, "delete", uploaded]) == 0
    assert cli([*base, "get", uploaded, "-o", "again.json"]) == 2
    assert f"artifact '{uploaded}' not found" in capsys.readouterr().out
    assert cli([*base, "put", "instructions", "missing.json"]) == 2
    assert "missing.json: cannot read it" in capsys.readouterr().out
