"""The encoder's typed client."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from promptopt.encoder.v1 import encoder_pb2, encoder_pb2_grpc

from services.common.channel import BaseClient
from services.common.codec import decode_tensor


class EncoderClient(BaseClient):
    def __init__(self, config):
        super().__init__(config)
        self.stub = encoder_pb2_grpc.EncoderServiceStub(self.channel)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings, shape [len(texts), dim]."""
        response = self.stub.Encode(encoder_pb2.EncodeRequest(texts=list(texts)), timeout=self.timeout)
        return decode_tensor(response.embeddings, "embeddings", ndim=2)

    def model_info(self) -> encoder_pb2.GetModelInfoResponse:
        return self.stub.GetModelInfo(encoder_pb2.GetModelInfoRequest(), timeout=self.timeout)
