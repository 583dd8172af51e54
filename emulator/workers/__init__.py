"""Programs that verify runs as their own processes, talking JSON over stdin/stdout.

scapy reads interfaces and routes once, at import, from the namespace it starts in. The backbone
capture is started inside the backbone namespace (`ip netns exec NS python -m …`). The probe engine
starts in the host namespace, never sends from it, and opens its sockets inside each lab namespace
(setns): it gives scapy only packets to build and dissect, never an interface or a route to look up.
"""
