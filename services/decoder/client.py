"""The decoder's typed client."""

from __future__ import annotations

from collections.abc import Sequence

from promptopt.decoder.v1 import decoder_pb2, decoder_pb2_grpc

from services.common.channel import BaseClient
from services.common.codec import encode_tensor
from services.common.convert import usage_from_proto


class DecoderClient(BaseClient):
    def __init__(self, config):
        super().__init__(config)
        self.stub = decoder_pb2_grpc.DecoderServiceStub(self.channel)

    def invert(self, embeddings, seed_texts: Sequence[str] = (), num_steps: int = 0, beam_width: int = 0):
        """([(text, cosine)] per embedding row, LLM usage). No deadline: LLM-guided inversion is slow on CPU."""
        response = self.stub.Invert(
            decoder_pb2.InvertRequest(
                embeddings=encode_tensor(embeddings),
                seed_texts=list(seed_texts),
                num_steps=num_steps,
                beam_width=beam_width,
            ),
            timeout=None,
        )
        return [(inv.text, inv.cosine) for inv in response.inversions], usage_from_proto(response.usage)
