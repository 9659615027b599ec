"""How the local backend runs one attempt: a process, or a container."""
