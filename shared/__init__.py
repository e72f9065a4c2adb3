"""Code common to every ferry service: settings, message types and codec, sockets, logging."""
