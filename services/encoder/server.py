"""gRPC transport for the encoder: validation and tensor encoding."""

from __future__ import annotations

from prometheus_client import Counter
from promptopt.encoder.v1 import encoder_pb2, encoder_pb2_grpc

from services.common.codec import encode_tensor
from services.common.errors import require
from services.encoder.core import Embedder

TEXTS = Counter("promptopt_encoder_texts_total", "Texts embedded.")


class EncoderServicer(encoder_pb2_grpc.EncoderServiceServicer):
    def __init__(self, embedder: Embedder | None, max_batch_size: int = 4096):
        self.embedder = embedder
        self.max_batch_size = max_batch_size

    def Encode(self, request, context):
        require(len(request.texts) > 0, "texts must contain at least one text")
        require(
            len(request.texts) <= self.max_batch_size,
            f"texts has {len(request.texts)} entries, more than max_batch_size {self.max_batch_size}",
        )
        empty = [i for i, t in enumerate(request.texts) if not t.strip()]
        require(not empty, f"texts[{empty[0] if empty else 0}] is empty")
        embeddings = self.embedder.encode(list(request.texts))
        TEXTS.inc(len(request.texts))
        return encoder_pb2.EncodeResponse(embeddings=encode_tensor(embeddings), model=self.embedder.model_name)

    def GetModelInfo(self, request, context):
        return encoder_pb2.GetModelInfoResponse(
            model=self.embedder.model_name,
            dimension=self.embedder.dimension,
            normalized=self.embedder.normalized,
            max_batch_size=self.max_batch_size,
        )
