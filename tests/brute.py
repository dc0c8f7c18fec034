"""Independent computations the tests compare the engine with: a whole forward pass of the model,
with autograd from the input, one image at a time."""
import torch


def outputs_in_graph(model, x, names):
    """The outputs of the modules ``names`` in one full forward pass (in the autograd graph)."""
    store = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: store.__setitem__(n, o)) for n in names]
    try:
        with torch.enable_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return [store[n] for n in names]


def gxa_of_map(model, x, layer, lower, k):
    """Eq. 3 for one image ``x`` [3, H, W] of a CNN: channel ``k`` of ``layer`` (its activation
    map, clamped, as the initial relevance) attributed to the channels of ``lower``, normalised."""
    low, high = outputs_in_graph(model, x[None].clone().requires_grad_(True), [lower, layer])
    a = high[0, k]
    (g,) = torch.autograd.grad(a, low, a.clamp(min=0))
    r = (g * low).sum((2, 3))[0].detach()
    return r / (r.abs().sum() + 1e-10)
