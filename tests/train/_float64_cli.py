"""``recu`` CLI with one more model, ``mlp_1w1a_float64``: the binary MLP in float64 (inputs cast up).

For tests/train/test_engine.py's one-process against two-process (DDP) comparison. Their gradients are
summed in different orders; in float32 the ~1e-7 differences let a binary activation, a latent weight or
a hardtanh input next to its threshold land on the other side on some CPUs and seeds (then weights differ
by far more than rounding). In float64 the runs differ by ~1e-15 and no such decision flips.
Run as ``python _float64_cli.py train --set ...`` or under ``torch.distributed.run``.
"""

import sys
from typing import Any

from torch import Tensor, nn

from recu.cli import main
from recu.models import register
from recu.models.tiny import BinaryMLP


class _Float64(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.double()  # the loader gives float32 batches


@register()
def mlp_1w1a_float64(num_classes: int = 10, config: Any = None, **kwargs: Any) -> nn.Module:
    return nn.Sequential(_Float64(), BinaryMLP(num_classes, config, **kwargs).double())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
