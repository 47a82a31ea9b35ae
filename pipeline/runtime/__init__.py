"""The stage runtime: the stage contract, chains and their editing, timed frames, the
inbound edge, latency metrics, the shared timer. It imports nothing else of the project.
"""
