"""gRPC transport for ArtifactService (`promptopt.artifacts.v1`) over one ArtifactStore."""

from __future__ import annotations

from promptopt.artifacts.v1 import artifacts_pb2, artifacts_pb2_grpc

from services.common.artifacts import ArtifactInfo, ArtifactStore, check_id
from services.common.convert import timestamp
from services.common.errors import require, shown
from services.common.server import ServiceBinding


def artifact_to_proto(info: ArtifactInfo) -> artifacts_pb2.Artifact:
    return artifacts_pb2.Artifact(
        artifact_id=info.artifact_id,
        kind=info.kind,
        name=info.name,
        size_bytes=info.size_bytes,
        sha256=info.sha256,
        create_time=timestamp(info.create_time),
    )


class ArtifactServicer(artifacts_pb2_grpc.ArtifactServiceServicer):
    """Put, get, list and delete the artifacts of one store."""

    def __init__(self, store: ArtifactStore):
        self.store = store

    def PutArtifact(self, request, context):  # noqa: N802 - gRPC method name
        info = self.store.put(request.kind, request.name, request.content)
        return artifacts_pb2.PutArtifactResponse(artifact=artifact_to_proto(info))

    def GetArtifact(self, request, context):  # noqa: N802
        value = check_id(request.artifact_id, "artifact_id")
        info = self.store.info(value)
        return artifacts_pb2.GetArtifactResponse(artifact=artifact_to_proto(info), content=self.store.get(value))

    def ListArtifacts(self, request, context):  # noqa: N802
        kinds = sorted(self.store.parsers)
        require(not request.kind or request.kind in kinds, f"kind must be one of {kinds}, got {shown(request.kind)!r}")
        return artifacts_pb2.ListArtifactsResponse(
            artifacts=[artifact_to_proto(i) for i in self.store.list(request.kind)]
        )

    def DeleteArtifact(self, request, context):  # noqa: N802
        deleted = self.store.delete(check_id(request.artifact_id, "artifact_id"))
        return artifacts_pb2.DeleteArtifactResponse(deleted=deleted)


def artifact_binding(store: ArtifactStore) -> ServiceBinding:
    """ArtifactService over `store`, for a process's `serve`."""
    add = artifacts_pb2_grpc.add_ArtifactServiceServicer_to_server
    return ServiceBinding.of(artifacts_pb2, "ArtifactService", add, ArtifactServicer(store))
