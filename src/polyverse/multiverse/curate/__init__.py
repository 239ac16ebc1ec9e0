"""Multiverse curator: sequential chain-of-thought text -> Multiverse-structured text.

Five LLM stages (summary tree, dependency analysis, reformat, refill, Goal/Conclusion) when an LLM
is given; a rule-based converter for GSM8K-like step-by-step answers as the fallback; every output
passes the grammar check and the content (edit distance) check. Entry points: ``curate_file``,
``curate_sample``, ``make_llm``.
"""

from .checks import Verdict, check, content, distance
from .files import CurateReport, curate_file
from .llm import LLM, EndpointConfig, LLMError, LLMUnavailable, LocalLLM, OpenAILLM, make_llm
from .pipeline import CurateConfig, Outcome, Sample, curate_sample, sample_from_row
from .rules import RulesConfig, convert, convert_text
from .stages import PROMPTS, StageConfig, Trace, run_stages

__all__ = [
    "CurateConfig", "CurateReport", "EndpointConfig", "LLM", "LLMError", "LLMUnavailable", "LocalLLM",
    "OpenAILLM", "Outcome", "PROMPTS", "RulesConfig", "Sample", "StageConfig", "Trace", "Verdict", "check",
    "content", "convert", "convert_text", "curate_file", "curate_sample", "distance", "make_llm",
    "run_stages", "sample_from_row",
]
