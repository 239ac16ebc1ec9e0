"""polyverse inside the engines users scale out on: vLLM (a speculative proposer) and Ray (sharded
offline batches). Each module imports its engine only when used, so polyverse runs without them."""
