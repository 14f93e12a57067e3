"""gRPC transport for the decoder."""

from __future__ import annotations

import logging

from promptopt.decoder.v1 import decoder_pb2, decoder_pb2_grpc

from services.common.codec import decode_tensor
from services.common.convert import usage_to_proto
from services.common.errors import require
from services.decoder.core import Inverter

log = logging.getLogger(__name__)


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
        pairs, usage = self.inverter.invert(targets, list(request.seed_texts), request.num_steps, request.beam_width)
        for text, cosine in pairs:
            log.info("inverted to cosine %.4f:\n%s", cosine, text)
        return decoder_pb2.InvertResponse(
            inversions=[decoder_pb2.Inversion(text=t, cosine=c) for t, c in pairs], usage=usage_to_proto(usage)
        )

    def GetModelInfo(self, request, context):
        return decoder_pb2.GetModelInfoResponse(backend=self.inverter.name, dimension=self.dimension)
