"""The names of each gateway's key files, apart from the parser (keylog.py) that fills them: `up`
and `status` need only the names, and the parser's patterns cost 5 ms to load."""

KEY_PIPE = "keys.pipe"  # per gateway: the FIFO charon logs into
KEYS_FILE = "keys.jsonl"  # per gateway, mode 0600: what workers/keylog.py keeps
CLOSED_FILE = "closed-sas.jsonl"  # per gateway: each CHILD_SA's final byte counts, when it closed
