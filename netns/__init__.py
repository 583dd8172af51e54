"""The namespace layer: a few typed netlink operations (pyroute2) and a registry that removes
exactly what the lab created."""
