"""Programs that run *inside* a lab namespace (started with `ip netns exec NS python -m …`).

scapy reads interfaces and routes once, at import, from the namespace it starts in: so every
scapy worker is its own process, started in its namespace, talking JSON over stdin/stdout.
"""
