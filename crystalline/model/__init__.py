"""The GPT model: flat-buffer layout, Numba kernels, forward/backward, sampling.

    from crystalline.model.gpt import GPT
"""
