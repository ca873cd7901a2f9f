"""How a call is being run: recorded by eager autograd, or traced into a graph (torch.compile, torch.export,
a JIT trace such as fvcore's FLOP count)."""
from __future__ import annotations

import torch

__all__ = ["records_autograd"]


def records_autograd(*tensors: torch.Tensor) -> bool:
    """Eager autograd will record this call. Compiled, exported and JIT-traced graphs get the plain formula
    instead of a hand-written ``autograd.Function``: they derive their own backward or need none."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)()
    return (torch.is_grad_enabled() and any(t.requires_grad for t in tensors) and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling() and not exporting)
