"""Scheduler service: runs the engine's scheduling loop and drives the runner ranks over sockets."""
