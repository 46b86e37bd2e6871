"""What a row costs besides time: memory, energy, clocks, and how close it runs to this machine's peak."""
