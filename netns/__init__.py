"""The namespace layer: named namespaces made, entered and removed with libc (nsfs), a few typed
netlink operations (ops, pyroute2), and a registry that removes exactly what the lab created."""
