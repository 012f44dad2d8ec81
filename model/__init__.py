"""Pure-PyTorch GAGAvatar: FLAME, the network, rasterizer backends, losses and metrics.

Importing this package needs only torch and numpy; CUDA rasterizers, lpips and friends are
imported inside the functions that use them.
"""
