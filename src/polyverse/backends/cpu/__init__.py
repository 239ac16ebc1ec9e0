"""The CPU speed layer of the transformers backend: what the CPU is, faster float32 products, and
the decode-time model prepared once.

- ``features``: vendor and feature flags (/proc/cpuinfo), and whether torch's MKL is tuned for the CPU.
- ``store``: the product-store protocol and ``StoreLinear``, an ``nn.Linear`` run through a store.
- ``rows`` (+ ``rows.cpp``): the AVX-512 row kernel and its store of panel-packed weights.
- ``packed``: oneDNN-packed weights, where the row kernel cannot run.
- ``few_rows``: W @ x.T for passes of 2 to 4 tokens, where no store of packed weights is used.
- ``head``: the LM head's product (``Projection``), the callable the lazy ``Logits`` project with.
- ``attention``: sdpa attention reading grouped key/value heads directly, for multi-row passes.
- ``prepare``: the decode-only view of a model (``DecodeModel``) that puts the above together.

Nothing here is imported by the core; ``prepare`` is what the transformers backend uses.
"""
