"""Encoder contract against the in-process embedder and the gRPC client."""

import numpy as np


def test_encode_shape_and_normalisation(encoder_service, embedder):
    texts = ["Let's think step by step.", "Solve the problem carefully.", "The cat sat on the mat."]
    out = encoder_service.encode(texts)
    assert out.shape == (3, embedder.dimension) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out, embedder.encode(texts), atol=1e-6)
    # paraphrases are closer than unrelated text
    assert out[0] @ out[1] > out[0] @ out[2]
