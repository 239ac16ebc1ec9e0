"""Training a draft head (``polyverse.heads``) on the target's own answers: ``data`` turns answers
into examples, ``fit`` trains the head on them."""
