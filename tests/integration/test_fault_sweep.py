"""SIGKILL each of the six services in turn mid-run, and hang llm_eval past the optimizer's
deadline: the run still succeeds, with no answer lost and none paid twice (see fault_sweep)."""

from __future__ import annotations

import pytest

from tests.integration.fault_sweep import FAULTS, failures, open_stack, sweep, table

pytestmark = pytest.mark.slow


def test_the_run_survives_every_service_killed_and_a_hang(tmp_path):
    with open_stack(tmp_path) as stack:
        result = sweep(stack)
    print(table(result))
    assert failures(result) == []
    assert {f.service for f in FAULTS} == {"encoder", "decoder", "llm_eval", "surrogate", "optimizer", "tuner"}
    felt = {(r.fault.service, r.fault.signal): r.felt for r in result.rows}
    # each fault on the run's path was felt, and ridden out the way it should be
    assert "retried Encode UNAVAILABLE" in felt["encoder", "SIGKILL"]
    assert "optimizer retried EvaluatePrompt UNAVAILABLE" in felt["llm_eval", "SIGKILL"]
    assert "optimizer retried EvaluatePrompt DEADLINE_EXCEEDED" in felt["llm_eval", "SIGSTOP"]
    assert "resumed at step" in felt["optimizer", "SIGKILL"]
    assert "surrogate lost a model" in felt["surrogate", "SIGKILL"]  # retrained, the step repeated
    assert "retried Invert UNAVAILABLE" in felt["decoder", "SIGKILL"]
    assert result.new_answers > 0  # the restarted llm_eval did answer, so "paid twice 0" means something
