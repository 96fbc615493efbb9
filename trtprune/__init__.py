"""trtprune: prune CNNs onto the latency stairs of the inference engine they will run on."""

__version__ = "0.1.0"
