"""The Neuro-Latent service client: training runs as operations, rewrites, feedback."""

from __future__ import annotations

import dataclasses

from promptopt.neuro.v1 import neuro_pb2, neuro_pb2_grpc

from services.common.channel import call
from services.common.operation_client import OperationClient
from services.neuro.types import Feedback


class NeuroClient(OperationClient):
    """Start, watch and cancel Neuro-Latent training runs; rewrite prompts; store feedback."""

    pb2 = neuro_pb2
    stub_class = neuro_pb2_grpc.NeuroServiceStub
    service = "neuro"

    def optimize(
        self,
        raw_prompt: str,
        max_length: int | None = None,
        num_return_sequences: int | None = None,
        checkpoint: str = "",
        temperature: float | None = None,
        seed: int = 0,
    ) -> tuple[list[str], str]:
        """(rewritten prompts, the checkpoint that wrote them); unset values take the seed's."""
        request = neuro_pb2.OptimizeRequest(
            raw_prompt=raw_prompt,
            max_length=max_length,
            num_return_sequences=num_return_sequences,
            checkpoint=checkpoint,
            temperature=temperature,
            seed=seed,
        )
        response = call(self.stub.Optimize, request, self.timeout)
        return list(response.optimized_prompts), response.checkpoint

    def submit_feedback(self, feedback: Feedback) -> tuple[int, int]:
        """(the stored feedback's id, feedback stored so far)."""
        request = neuro_pb2.SubmitFeedbackRequest(feedback=neuro_pb2.Feedback(**dataclasses.asdict(feedback)))
        response = call(self.stub.SubmitFeedback, request, self.timeout)
        return response.feedback_id, response.total

    def list_feedback(self, page_size: int = 50, page_token: str = "") -> tuple[list[tuple[int, float, Feedback]], str]:
        """((id, time, feedback) newest first, the next page's token or "")."""
        request = neuro_pb2.ListFeedbackRequest(page_size=page_size, page_token=page_token)
        response = call(self.stub.ListFeedback, request, self.timeout)
        rows = [
            (
                row.feedback_id,
                row.time,
                Feedback(**{f.name: getattr(row.feedback, f.name) for f in dataclasses.fields(Feedback)}),
            )
            for row in response.feedback
        ]
        return rows, response.next_page_token
