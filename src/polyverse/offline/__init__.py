"""Offline batch jobs (generate --input, train distill, train cllm collect) as shards: what a shard
writes (``work``), results put back in input order (``ordered``), and the driver that runs shards on
workers, keeps finished ones, redoes lost ones and writes the output in order (``shards``)."""
