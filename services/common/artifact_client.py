"""ArtifactService's client: upload a local file's content and name it by the id it gets."""

from __future__ import annotations

from pathlib import Path

from promptopt.artifacts.v1 import artifacts_pb2, artifacts_pb2_grpc

from services.common.channel import BaseClient, call


class ArtifactClient(BaseClient):
    """Upload, fetch, list and delete a service's artifacts (raw protos: they are the user's objects)."""

    def __init__(self, config):
        super().__init__(config)
        self.stub = artifacts_pb2_grpc.ArtifactServiceStub(self.channel)

    def put(self, kind: str, content: bytes, name: str = "") -> artifacts_pb2.Artifact:
        request = artifacts_pb2.PutArtifactRequest(kind=kind, name=name, content=content)
        return self.stub.PutArtifact(request, timeout=self.timeout).artifact

    def upload(self, kind: str, path: str | Path) -> str:
        """The id of the local file at `path` uploaded as `kind`; ValueError naming the file when
        it cannot be read."""
        path = Path(path)
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
        return self.put(kind, content, path.name).artifact_id

    def get(self, artifact_id: str) -> artifacts_pb2.GetArtifactResponse:
        return call(self.stub.GetArtifact, artifacts_pb2.GetArtifactRequest(artifact_id=artifact_id), self.timeout)

    def list(self, kind: str = "") -> list[artifacts_pb2.Artifact]:
        return list(
            self.stub.ListArtifacts(artifacts_pb2.ListArtifactsRequest(kind=kind), timeout=self.timeout).artifacts
        )

    def delete(self, artifact_id: str) -> bool:
        request = artifacts_pb2.DeleteArtifactRequest(artifact_id=artifact_id)
        return self.stub.DeleteArtifact(request, timeout=self.timeout).deleted
