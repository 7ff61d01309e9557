"""The bottom of the house: scores and masks on tensors, with nothing of models, data or allocation.

``kernels`` dispatches each operation to a CUDA kernel (``resources/kernels/*.cu`` through CuPy) for CUDA tensors
and to its torch twin in ``reference`` for CPU tensors; nothing here imports from the rest of the package.
"""
