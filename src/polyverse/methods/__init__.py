"""Built-in methods, registered by name in ``polyverse.registry``."""

from ..registry import registry
from . import ar, auto, draft_model, jacobi, lookahead, prompt_lookup, space
from ..multiverse import engine as multiverse

registry.register("ar", ar.ARConfig, ar.make, "plain autoregressive decoding: one token per pass (the reference)")
registry.register("jacobi", jacobi.JacobiConfig, jacobi.make, "Jacobi / CLLM decoding: refine a block of guesses in parallel")
registry.register("lookahead", lookahead.LookaheadConfig, lookahead.make,
                  "lookahead decoding: 2D Jacobi window + n-gram pool verified in the same pass")
registry.register("prompt_lookup", prompt_lookup.PromptLookupConfig, prompt_lookup.make,
                  "copy what followed earlier matches of the last n-gram (prompt and output), as a tree")
registry.register("draft", draft_model.DraftConfig, draft_model.make_draft,
                  "speculative decoding with a draft model that shares the tokenizer")
registry.register("early_exit", draft_model.EarlyExitConfig, draft_model.make_early_exit,
                  "speculative decoding drafted by the target's own first L layers")
registry.register("auto", auto.AutoConfig, auto.make,
                  "adaptive: n-gram speculation or plain decoding per step, draft size from measured pass costs")
registry.register("space", space.SpaceConfig, space.make,
                  "SPACE auto-correct decoding: a [MASK]-trained model verifies and proposes in one pass")
registry.register("multiverse", multiverse.MultiverseConfig, multiverse.make,
                  "Multiverse: fork a path per <Outline> at </Goal>, decode the paths together, merge (guided=true: any model)")
