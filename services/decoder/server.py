"""gRPC transport for the decoder."""

from __future__ import annotations

from promptopt.decoder.v1 import decoder_pb2, decoder_pb2_grpc

from services.common.codec import decode_tensor
from services.common.errors import require
from services.decoder.core import Inverter


class DecoderServicer(decoder_pb2_grpc.DecoderServiceServicer):
    def __init__(self, inverter: Inverter | None, dimension: int = 0):
        self.inverter = inverter
        self.dimension = dimension

    def Invert(self, request, context):
        targets = decode_tensor(request.embeddings, "embeddings", ndim=2)
        require(targets.shape[0] > 0, "embeddings must have at least one row")
        require(request.num_steps >= 0, "num_steps must be >= 0")
        require(request.beam_width >= 0, "beam_width must be >= 0")
        require(
            not self.dimension or targets.shape[1] == self.dimension,
            f"embeddings have dimension {targets.shape[1]}, expected {self.dimension}",
        )
        pairs = self.inverter.invert(targets, list(request.seed_texts))
        return decoder_pb2.InvertResponse(inversions=[decoder_pb2.Inversion(text=t, cosine=c) for t, c in pairs])

    def GetModelInfo(self, request, context):
        return decoder_pb2.GetModelInfoResponse(backend=self.inverter.name, dimension=self.dimension)
