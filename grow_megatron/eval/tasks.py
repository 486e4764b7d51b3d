"""The multiple-choice example format shared by the evaluators and the depth analyses."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MCExample:
    """One multiple-choice question scored by comparing the model's log-likelihood of each
    choice as a continuation of `prompt` (the choice with the highest sum wins)."""

    prompt: str
    """Full context, few-shot examples included, ending right before the answer."""
    choices: tuple[str, ...]
    """Candidate continuations (each starts with the separator it needs, e.g. a space)."""
    answer: int
    """Index of the correct choice."""
    task: str = ""
    """Name of the task that produced it, e.g. 'copying_random'."""
