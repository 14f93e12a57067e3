"""LIPO-E's Hyperband proposals over (instruction, exemplar set) pairs, on a real JointPromptGP:
the grid proposer ranks by LogEI (lower error is better), interleaves random picks, waits for
MIN_GP_POINTS pairs, trains on every fidelity and deletes superseded fits."""

import random

import numpy as np
import pytest

from services.common.errors import NotFoundError
from services.optimizer.algorithms.hyperband import MIN_GP_POINTS, Evaluation
from services.optimizer.algorithms.lipo_e import JointGp, JointProposer, PairSpace, Scorer
from services.surrogate.engine import SurrogateEngine
from services.surrogate.types import JointGpConfig, JointVaeConfig, ScorerConfig

INSTRUCTIONS, SETS = 12, 12


class GridEngine(SurrogateEngine):
    """The real engine with a fixed z per (instruction, set): z_inst and z_ex drawn once, so the
    true error (a smooth interaction of both) is known for every pair."""

    def __init__(self, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.z_inst, self.z_ex = rng.normal(size=(INSTRUCTIONS, 16)), rng.normal(size=(SETS, 16))
        self.encoded = 0

    def encode_joint(self, vae_id, instructions, exemplar_sets):
        self.encoded += len(exemplar_sets)
        return np.array(
            [
                np.concatenate([self.z_inst[int(i[0])], self.z_ex[s[0]]])
                for i, s in zip(instructions, exemplar_sets, strict=True)
            ]
        )

    def true_error(self, pair):
        i, (e,) = pair
        return float(0.5 - 0.35 * np.tanh(self.z_inst[i, 0] + self.z_ex[e, 0]) - 0.1 * np.tanh(self.z_inst[i, 1]))


FAST_GP = JointGpConfig(epochs=200)


def grid(seed=0, random_prob=0.0, config=FAST_GP):
    engine = GridEngine(seed)
    space = PairSpace(engine, "vae", lambda idx: np.asarray(idx, dtype=float)[:, None])
    space.add([(i, [e]) for i in range(INSTRUCTIONS) for e in range(SETS)])
    gp = JointGp(engine, space, config, owner="run")
    return engine, space, gp, JointProposer(gp, random_prob, grid=True, seed=seed)


def test_the_grid_space_encodes_each_pair_once():
    engine, space, _, _ = grid()
    assert len(space.pairs) == 144 and engine.encoded == 144
    assert space.add([(3, [4]), (3, [4])]) == [3 * SETS + 4] * 2 and engine.encoded == 144


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_proposals_go_to_low_error_pairs(seed):
    engine, space, gp, proposer = grid(seed)
    truth = np.array([engine.true_error(p) for p in space.pairs])
    rng = np.random.default_rng(seed)
    observed = rng.choice(144, size=24, replace=False)
    history = [Evaluation(int(i), 1319, truth[i]) for i in observed]
    picks = proposer.propose(range(144), 8, history, random.Random(seed))
    assert len(set(picks)) == 8
    # the GP's top LogEI pairs are better than the grid's median (reversing the ranking fails this)
    assert np.mean(truth[picks]) < np.quantile(truth, 0.35)


def test_random_until_min_points_and_interleaving():
    _, _, gp, proposer = grid(random_prob=1.0)
    history = [Evaluation(i, 100, 0.5) for i in range(MIN_GP_POINTS - 1)]
    assert proposer.propose(range(144), 5, history, random.Random(0)) and gp.fits == 0
    history.append(Evaluation(50, 100, 0.2))
    picks = [p for s in range(20) for p in proposer.propose(range(144), 5, history, random.Random(s))]
    assert gp.fits == 1  # one fit for unchanged data
    assert len(set(picks)) > 40  # all random: spread over the grid


def test_gp_trains_on_every_fidelity_and_deletes_superseded_fits():
    engine, _, gp, _ = grid()
    history = [Evaluation(i, 10, 0.4) for i in range(4)] + [Evaluation(0, 40, 0.3)]
    first = gp.model_for(history)
    data = gp.data(history)
    assert {i: (e.fidelity, e.error) for i, e in data.items()}[0] == (40, 0.3)  # highest fidelity per pair
    second = gp.model_for([*history, Evaluation(9, 10, 0.9)])
    assert second != first and gp.fits == 2
    with pytest.raises(LookupError):
        engine.predict(first, np.zeros((1, 32)))


class ScriptedSurrogate:
    """Stage-2 proposals with known LogEI: instruction i gets set [i % 5] with LogEI -i (lower
    instruction index, better); encode_joint just numbers the pairs."""

    def __init__(self):
        self.fitted = 0

    def encode_joint(self, vae_id, instructions, exemplar_sets):
        return np.zeros((len(exemplar_sets), 32))

    def fit_joint(self, z, errors, fidelities, config, owner=""):
        self.fitted += 1
        return type("Fit", (), {"model_id": f"gp{self.fitted}"})()

    def delete(self, model_id):
        pass

    def propose_exemplars(self, vae_id, model_id, instructions, steps, restarts, seed):
        return [([int(i) % 5], -float(i)) for i in np.asarray(instructions)[:, 0]]


def test_standard_proposals_take_the_pairs_of_highest_log_ei():
    surrogate = ScriptedSurrogate()
    space = PairSpace(surrogate, "vae", lambda idx: np.asarray(idx, dtype=float)[:, None])
    gp = JointGp(surrogate, space, FAST_GP)
    proposer = JointProposer(gp, 0.0, grid=False, num_instructions=100, pool_size=20, candidates=50, seed=0)
    history = [Evaluation(i, 10, 0.5) for i in space.add([(90 + k, [k]) for k in range(4)])]
    picks = proposer.propose(range(100), 3, history, random.Random(0))
    sampled = sorted(space.pairs[p][0] for p in picks)
    # of the 50 sampled instructions, the 3 of highest LogEI (lowest index), each with its proposed set
    assert sampled == sorted(random.Random(0).sample(range(100), 50))[:3]
    assert all(space.pairs[p][1] == (space.pairs[p][0] % 5,) for p in picks)


def test_random_standard_pairs_respect_the_slot_bounds():
    surrogate = ScriptedSurrogate()
    space = PairSpace(surrogate, "vae", lambda idx: np.asarray(idx, dtype=float)[:, None])
    proposer = JointProposer(
        JointGp(surrogate, space, FAST_GP), 1.0, grid=False, num_instructions=7, pool_size=9, num_slots=3,
        min_exemplars=1,
    )  # fmt: skip
    picks = proposer.propose(range(7), 30, [], random.Random(1))
    assert len(picks) == 30 and surrogate.fitted == 0
    sizes = {len(space.pairs[p][1]) for p in picks}
    assert sizes <= {1, 2, 3} and len(sizes) > 1
    assert all(0 <= space.pairs[p][0] < 7 and len(set(space.pairs[p][1])) == len(space.pairs[p][1]) for p in picks)


def test_the_scorer_picks_the_proposals_exemplars_from_what_measured_well():
    """BOLT: exemplars 0 and 1 are in every good pair; the scorer's MMR picks lead with them, the
    GP picks how many of them, and a scorer is retrained only on new data."""
    rng = np.random.default_rng(0)
    engine = SurrogateEngine()
    instructions, pool = rng.normal(size=(6, 16)), rng.normal(size=(10, 16))
    vae = engine.train_joint_vae(instructions, pool, JointVaeConfig(epochs=3, samples=64, num_slots=3))
    space = PairSpace(engine, vae.vae_id, lambda idx: instructions[list(idx)])
    sets = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [1, 0, 5]]
    indices = space.add([(i, s) for i in range(6) for s in sets])
    history = [Evaluation(k, 100, 0.1 if 0 in space.pairs[k][1] else 0.7) for k in indices]
    gp = JointGp(engine, space, JointGpConfig(epochs=60), owner="run")
    scorer = Scorer(gp, pool, ScorerConfig(epochs=200), 6, owner="run")
    proposer = JointProposer(gp, 0.0, False, 6, 10, 3, 1, candidates=6, steps=3, restarts=2, scorer=scorer)
    picks = proposer.propose(None, 6, history, random.Random(0))
    chosen = [space.pairs[k][1] for k in picks]
    assert all(1 <= len(s) <= 3 for s in chosen)
    assert all(set(s[:2]) <= {0, 1} for s in chosen), chosen  # the relevant exemplars come first
    assert len(scorer.trainings) == 1 and scorer.trainings[0]["pairs"] == 36
    first = scorer._trained[1]
    proposer.propose(None, 2, history, random.Random(1))
    assert len(scorer.trainings) == 1  # same data: no retraining
    history.append(Evaluation(picks[0], 100, 0.05))
    proposer.propose(None, 2, history, random.Random(2))
    assert len(scorer.trainings) == 2 and scorer._trained[1] != first
    with pytest.raises(NotFoundError):
        engine.registry.get(first)
