"""Neuro-Latent training data from the platform's records (seed 002's JSON): the exporter pairs
weak instructions with strong similar ones and a run's incumbent with the proposals that beat
it; feedback teaches what users rated well and contrasts it with what they rated badly. Each
test fails if the better/worse direction is flipped."""

from services.cli.neuro_export import SAMPLE, export_training_data, from_run, from_scores
from services.neuro.core import TrainingData
from services.neuro.feedback import feedback_training_data
from services.neuro.types import Feedback


def test_recorded_scores_pair_the_worst_quarter_with_similar_instructions_of_the_best():
    scored = [
        ("Solve the math problem step by step.", 0.9),
        ("Answer the riddle with a poem.", 0.8),
        ("Write the final number only.", 0.5),
        ("Think about the riddle.", 0.45),
        ("Compute it quickly.", 0.4),
        ("Solve the math problem.", 0.2),
        ("Riddle: answer it.", 0.1),
        ("Just answer.", 0.05),
    ]
    data = from_scores(scored)  # a quarter of 8: the 2 best teach the 2 worst
    assert data["distillation_pairs"] == [
        {"raw": "Riddle: answer it.", "teacher": "Answer the riddle with a poem."},
        {"raw": "Just answer.", "teacher": "Answer the riddle with a poem."},
    ]
    assert data["triplets"][0] == {
        "anchor": "Riddle: answer it.",
        "positive": "Answer the riddle with a poem.",
        "negative": ["Just answer."],
    }


def test_a_runs_incumbent_is_taught_by_the_proposals_that_beat_it():
    def candidate(step, prompt, score):
        return {"step": step, "prompt": prompt, "score": score, "comparable": True}

    doc = {
        "candidates": [
            candidate(0, "start", 0.3),
            candidate(1, "better", 0.5),
            candidate(1, "worse", 0.1),
            candidate(1, "screened", 0.9) | {"comparable": False},  # fewer questions: never a teacher
            candidate(2, "best", 0.7),
            candidate(2, "dud", 0.2),
        ]
    }
    data = from_run(doc)
    assert data["distillation_pairs"] == [{"raw": "start", "teacher": "better"}, {"raw": "better", "teacher": "best"}]
    assert data["triplets"] == [
        {"anchor": "start", "positive": "better", "negative": ["worse"]},
        {"anchor": "better", "positive": "best", "negative": ["dud"]},
    ]


def test_the_export_of_the_committed_records_reads_as_training_data(tmp_path):
    data = TrainingData.from_json(export_training_data([]))
    assert len(data.distillation_pairs) == 25 + 3  # the worst quarter of the 100 recorded and of the grid's 12
    assert TrainingData.from_json(SAMPLE).triplets  # the --create-sample file is valid too


def test_feedback_teaches_good_rewrites_and_contrasts_them_with_bad_ones():
    feedback = [
        Feedback("Solve it.", "Solve the problem step by step.", 0.9),
        Feedback("Solve it.", "Write a poem.", 0.1),
        Feedback("Solve it.", "Guess.", 0.0, corrected_prompt="Work it out and give the number."),
        Feedback("Add.", "Add the numbers.", 0.6),
    ]
    data = feedback_training_data(feedback)
    assert data["distillation_pairs"] == [
        {"raw": "Solve it.", "teacher": "Solve the problem step by step."},
        {"raw": "Solve it.", "teacher": "Work it out and give the number."},
        {"raw": "Add.", "teacher": "Add the numbers."},
    ]
    assert data["triplets"] == [
        {"anchor": "Solve it.", "positive": "Work it out and give the number.", "negative": ["Write a poem.", "Guess."]}
    ]
