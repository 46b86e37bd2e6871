"""Triton kernels, each file holding a kernel, its launcher and a pure-PyTorch reference of the same math."""
