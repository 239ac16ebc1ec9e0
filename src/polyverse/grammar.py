"""Structured output: a grammar the output must follow, compiled by llguidance for the model's tokenizer.

A ``GrammarSpec`` is what a user asks for (any JSON object, a JSON schema, a regular expression, a
Lark context-free grammar); ``compile_grammar`` checks it against the model's tokenizer and gives a
``Grammar``, immutable and shared by every request that uses it; each request walks it with a
``GrammarState`` of its own. The state answers the questions the decode loop asks: which tokens may
come after the output so far and a draft path below it (a mask for a row of the pass), how much of a
draft path the grammar allows (cut before the pass), and which tokens it forces next (drafted for free).

llguidance was chosen over xgrammar by measurement (``docs/structured-output.md``): both compute a
mask in far less than a pass, and llguidance gives forced tokens as token ids, is one wheel with no
dependencies and reads any tokenizer through a table of token bytes.

JSON is written compactly with the separators most text uses (``", "``, ``": "``) and no other
whitespace: flexible whitespace would let a small model write blank space for ever.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Sequence

import torch

from .errors import ConfigError

KINDS = ("json_object", "json_schema", "regex", "lark")
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
MAX_SOURCE = 100_000  # characters of a schema, pattern or grammar


@dataclass(frozen=True)
class GrammarSpec:
    """What the output must be: ``kind`` one of KINDS; ``source`` the schema (JSON text), the pattern or
    the Lark grammar ("" for any JSON object).

    Example: GrammarSpec.regex(r"\\d{3}") -> exactly three digits.
    """

    kind: str
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown grammar kind '{self.kind}': use one of {', '.join(KINDS)}")
        if not isinstance(self.source, str):
            raise ConfigError(f"the {self.kind} must be given as text")
        if len(self.source) > MAX_SOURCE:
            raise ConfigError(f"the {self.kind} is {len(self.source)} characters long; at most {MAX_SOURCE}")
        if self.kind != "json_object" and not self.source.strip():
            raise ConfigError(f"the {self.kind} is empty")

    @classmethod
    def json_object(cls) -> "GrammarSpec":
        return cls("json_object")

    @classmethod
    def json_schema(cls, schema) -> "GrammarSpec":
        """From a dict, JSON text, or a pydantic model class (its ``model_json_schema()``)."""
        if hasattr(schema, "model_json_schema"):
            schema = schema.model_json_schema()
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"the JSON schema is not valid JSON: {exc}") from None
        if not isinstance(schema, dict):
            raise ConfigError("a JSON schema must be a JSON object")
        return cls("json_schema", json.dumps(schema))

    @classmethod
    def regex(cls, pattern: str) -> "GrammarSpec":
        return cls("regex", pattern)

    @classmethod
    def lark(cls, grammar: str) -> "GrammarSpec":
        return cls("lark", grammar)

    def llguidance(self) -> str:
        """The grammar in llguidance's own form; an invalid spec raises ConfigError naming the problem."""
        import llguidance

        try:
            if self.kind == "json_object":
                return llguidance.LLMatcher.grammar_from_json_schema('{"type": "object"}', defaults=JSON_OPTIONS)
            if self.kind == "json_schema":
                return llguidance.LLMatcher.grammar_from_json_schema(self.source, defaults=JSON_OPTIONS)
            if self.kind == "regex":
                return llguidance.LLMatcher.grammar_from_regex(self.source)
            return llguidance.LLMatcher.grammar_from_lark(self.source)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise ConfigError(f"the {self.kind.replace('_', ' ')} is invalid: {_brief(exc)}") from None


def _brief(message) -> str:
    """An error message on one line, at most 300 characters (llguidance's span several)."""
    text = " ".join(str(message).split())
    return text[:300] if text else "no reason given"


class _TokenTable:
    """A tokenizer as llguidance's ``TokenizerWrapper`` reads one: every id's bytes, for tokenizers
    its Hugging Face reader does not understand (the tiny models' character tokenizer)."""

    def __init__(self, tokenizer, vocab: int) -> None:
        special = set(getattr(tokenizer, "all_special_ids", ()) or ())
        size = min(len(tokenizer), vocab)
        self.tokens = [tokenizer.decode([i]).encode() if i < size else b"" for i in range(vocab)]
        self.special_token_ids = sorted(i for i in special if i < vocab)
        self.eos_token_id = tokenizer.eos_token_id
        self.bos_token_id = getattr(tokenizer, "bos_token_id", None)
        self._tokenizer = tokenizer

    def __call__(self, text) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])


@functools.lru_cache(maxsize=8)
def _lltokenizer(tokenizer, vocab: int):
    """The llguidance tokenizer of a model's tokenizer: built once (it takes a while) per tokenizer."""
    import llguidance
    import llguidance.hf

    try:
        return llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
    except (ValueError, TypeError, RuntimeError):
        return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_TokenTable(tokenizer, vocab)), n_vocab=vocab)


class Grammar:
    """A spec compiled for one tokenizer and vocabulary width; ``state()`` starts a request's walk.

    The first mask of a fresh matcher builds its lexer, which for some grammars takes far longer than
    a pass; it is built here, once (where the grammar is compiled: off the decode thread in the
    server), and every request's state starts from a copy of that warmed matcher.
    """

    def __init__(self, spec: GrammarSpec, lltokenizer, vocab: int, eos_token_ids: Sequence[int]) -> None:
        import llguidance

        self.spec = spec
        self.vocab = vocab
        self.eos = tuple(int(t) for t in eos_token_ids if 0 <= int(t) < vocab)
        self._tokenizer = lltokenizer
        self._grammar = spec.llguidance()
        self._start = llguidance.LLMatcher(lltokenizer, self._grammar, log_level=0)  # never moved: copied
        if not self._start.is_error():
            GrammarState(self, self._start)._mask_here()  # the warm-up
        if self._start.is_error():
            raise ConfigError(f"the {spec.kind.replace('_', ' ')} is invalid: {_brief(self._start.get_error())}")

    def state(self) -> "GrammarState":
        return GrammarState(self, self._start.deep_copy())


def compile_grammar(spec: GrammarSpec, tokenizer, vocab: int, eos_token_ids: Sequence[int]) -> Grammar:
    """``spec`` compiled for a model (its tokenizer, the width of its logits, its end tokens)."""
    return Grammar(spec, _lltokenizer(tokenizer, int(vocab)), int(vocab), eos_token_ids)


class GrammarState:
    """One request's place in its grammar: it has consumed the request's output so far (not its end
    token). Draft paths are walked and rolled back, so the state itself only moves with ``advance``."""

    def __init__(self, grammar: Grammar, matcher) -> None:
        import llguidance.torch

        self.grammar = grammar
        self.matcher = matcher
        self._bits = llguidance.torch.allocate_token_bitmask(1, grammar.vocab)  # [1, ceil(V / 32)] int32
        self._fill = llguidance.torch.fill_next_token_bitmask
        self._shifts = torch.arange(32, dtype=torch.int32)  # [32]: a bit's place in its int32 word

    def _mask_here(self) -> torch.Tensor:
        """Allowed next tokens in the matcher's current state: bool [V]; the model's end tokens where
        the grammar may end, and only there."""
        self._fill(self.matcher, self._bits, 0)
        bits = (self._bits[0][:, None] >> self._shifts) & 1  # [ceil(V / 32), 32]
        allowed = bits.reshape(-1)[: self.grammar.vocab].bool()  # [V]
        ends = list(self.grammar.eos)
        if ends:
            allowed[ends] = self.matcher.is_accepting()
        if not bool(allowed.any()):  # a dead end cannot be sampled from: let the request end
            allowed[ends or [0]] = True
        return allowed

    def mask(self, path: Sequence[int] = ()) -> torch.Tensor:
        """Allowed tokens after the output so far followed by ``path``: bool [V]. A path that ended
        (an end token) or that the grammar refuses has no continuation: only the end tokens are
        allowed there (verification never reaches such a row; see ``shaping.Shaper.draft``)."""
        path = [int(t) for t in path]
        ended = any(t in self.grammar.eos for t in path)
        # try_consume stops at a refused token without the matcher's (permanent) error state
        walked = 0 if ended else int(self.matcher.try_consume_tokens(path)) if path else 0
        try:
            if ended or walked < len(path):
                allowed = torch.zeros(self.grammar.vocab, dtype=torch.bool)
                allowed[list(self.grammar.eos) or [0]] = True
                return allowed
            return self._mask_here()
        finally:
            if walked:
                self.matcher.rollback(walked)

    def valid(self, path: Sequence[int]) -> int:
        """How many leading tokens of ``path`` the grammar allows after the output so far."""
        if not path:
            return 0
        ends = set(self.grammar.eos)
        tokens = [int(t) for t in path]
        cut = next((i for i, t in enumerate(tokens) if t in ends), len(tokens))
        n = int(self.matcher.validate_tokens(tokens[:cut])) if cut else 0
        if n == cut < len(tokens):  # an end token where the grammar may end
            self.matcher.consume_tokens(tokens[:cut])
            try:
                n += int(self.matcher.is_accepting())
            finally:
                self.matcher.rollback(cut)
        return n

    def forced(self) -> list[int]:
        """The tokens the grammar forces next (possibly none)."""
        return [int(t) for t in self.matcher.compute_ff_tokens()]

    def advance(self, tokens: Sequence[int]) -> None:
        """Consume the request's new output tokens (an end token ends the walk and is not consumed)."""
        ends = set(self.grammar.eos)
        body = [int(t) for t in tokens if int(t) not in ends]
        if body and not self.matcher.consume_tokens(body):
            # masked rows write only allowed tokens, so a refusal means the grammar asked for text this
            # vocabulary cannot write (a character the tokenizer only has as <unk>): the request's fault
            raise ConfigError(f"the grammar cannot be followed with this model's vocabulary: it refused the output "
                              f"tokens {body}: {_brief(self.matcher.get_error())}")
