"""TRP around a few SGD steps on one random digits-sized batch, as the tests of several files run
it."""

import torch
import torch.nn.functional as F


def trp_steps(model, trp, steps: int) -> list[float]:
    """``steps`` training steps of ``model`` with the regularizer ``trp`` hooked in (SGD, lr
    0.05, momentum 0.9) on one batch of 16 random 1x8x8 images; the losses."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    losses = []
    for _ in range(steps):
        trp.before_forward()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        trp.after_backward()
        optimizer.step()
        losses.append(float(loss))
    return losses
