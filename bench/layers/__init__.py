"""``--profile layers``: where each backend's time goes, layer by layer, from the runtime's own
profiler, every layer named by the PyTorch modules it computes (``layer3.4.conv2+bn2+relu``), so
that backends which fuse and name their layers differently line up on one table."""
