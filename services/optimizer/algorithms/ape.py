"""APE instruction pool (seed 000): the meta-LLM writes instructions in five style categories,
in batches, at each category's temperature; results are cleaned, length-limited,
de-duplicated and cached to a JSON list (the format of `ape_instructions_1000.json`)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from services.common.text import instruction_lines
from services.llm_eval.client import MeteredLlm
from services.llm_eval.types import DecodingParams
from services.optimizer.algorithms.base import load_template

STYLE_CATEGORIES = {
    "minimalist": {
        "description": "Ultra-short, terse (1-5 words only)",
        "examples": ["Solve:", "Answer:", "Calculate.", "Find:"],
        "temperature": 1.0,
    },
    "direct_command": {
        "description": "Short imperative commands (6-15 words)",
        "examples": ["Find the answer to this problem."],
        "temperature": 0.9,
    },
    "chain_of_thought": {
        "description": "Step-by-step reasoning triggers",
        "examples": ["Let's think step by step."],
        "temperature": 0.8,
    },
    "pedagogical": {
        "description": "Patient teacher/tutor persona",
        "examples": ["You are a patient tutor. Walk the student through each step of the solution."],
        "temperature": 0.9,
    },
    "analytical": {
        "description": "Focus on logical structure and analysis",
        "examples": ["Analyze the logical structure of the problem before computing the answer."],
        "temperature": 0.8,
    },
}


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def load_cache(path: str | Path) -> list[str]:
    """The cached pool (a JSON list of strings), or [] when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    if not isinstance(data, list) or not all(isinstance(t, str) for t in data):
        raise ValueError(f"{path}: an APE cache must be a JSON list of strings")
    return data


def generate_pool(
    llm: MeteredLlm,
    num_instructions: int,
    cache_path: str | Path,
    batch_size: int = 10,
    max_tokens: int = 100,
    max_length: int = 500,
    seed: int = 0,
    progress: Callable[[str], None] = lambda message: None,
) -> list[str]:
    """`num_instructions` distinct instructions: from the cache, generating (and caching) the rest.

    Categories take turns, one batch of `batch_size` per call with `max_tokens` per instruction.
    Stops after 3x the needed batches even if short (small models repeat themselves).
    """
    pool = load_cache(cache_path)
    seen = {_norm(t) for t in pool}
    if len(pool) >= num_instructions:
        return pool[:num_instructions]
    template = load_template("ape_generate")
    categories = list(STYLE_CATEGORIES.items())
    max_calls = 3 * math.ceil((num_instructions - len(pool)) / batch_size)
    for call in range(max_calls):
        if len(pool) >= num_instructions:
            break
        style, spec = categories[call % len(categories)]
        prompt = template.format(
            style=style,
            description=spec["description"],
            examples="\n".join(spec["examples"]),
            count=batch_size,
        )
        params = DecodingParams(temperature=spec["temperature"], max_tokens=max_tokens * batch_size, seed=seed + call)
        added = 0
        for line in instruction_lines(llm.generate([prompt], params)[0], max_length)[:batch_size]:
            if _norm(line) not in seen and len(pool) < num_instructions:
                seen.add(_norm(line))
                pool.append(line)
                added += 1
        progress(f"APE batch {call + 1} ({style}): {added} new, pool {len(pool)}/{num_instructions}")
        Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
        Path(cache_path).write_text(json.dumps(pool, indent=2))
    return pool
